"""Rectified flow on a toy 2-D bimodal problem: one reflow round straightens the flow, so one Euler step of 2-RF lands
near the data while one step of 1-RF lands between the modes (Rectified Flow, arXiv 2209.03003, fig. 2)."""

import torch
from torch import nn

from smolvla.model.rectified_flow import euler_sample, interpolate, straightness

MODES = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])


class Field(nn.Module):
    """v(x, t): a small MLP on (x, t)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def data(n, g):
    return MODES[torch.randint(0, 2, (n,), generator=g)] + 0.1 * torch.randn(n, 2, generator=g)


def fit(pairs, steps, g):
    """Flow matching on (noise, target) pairs from `pairs(n)`: x_t on the straight line, target noise − target."""
    torch.manual_seed(0)
    field = Field()
    opt = torch.optim.Adam(field.parameters(), lr=3e-3)
    for _ in range(steps):
        noise, target = pairs(256)
        t = torch.rand(len(noise), generator=g)
        x_t, u_t = interpolate(noise, target, t)
        loss = (field(x_t, t) - u_t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return field.requires_grad_(False)


def distance_to_data(x):
    """Mean distance of samples to the nearest mode centre."""
    return torch.cdist(x, MODES).min(dim=1).values.mean().item()


def test_one_reflow_round_makes_one_step_samples_land_on_the_data():
    g = torch.Generator().manual_seed(0)
    one_rf = fit(lambda n: (torch.randn(n, 2, generator=g), data(n, g)), 1000, g)

    cache_noise = torch.randn(8192, 2, generator=g)  # the 1-RF teacher's own coupling, solved once: a pair cache
    cache_data = euler_sample(one_rf, cache_noise, 50)

    def reflow_pairs(n):
        rows = torch.randint(0, len(cache_noise), (n,), generator=g)
        return cache_noise[rows], cache_data[rows]

    two_rf = fit(reflow_pairs, 1000, g)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    d1, d2 = (distance_to_data(euler_sample(f, noise, 1)) for f in (one_rf, two_rf))
    d1_many = distance_to_data(euler_sample(one_rf, noise, 50))
    assert d1_many < 0.4, "the 1-RF model itself must have learnt the data with many steps"
    assert d1 > 1.0, "one step of the curved 1-RF flow should land between the modes"
    print(f"1-step distance to data: 1-RF {d1:.3f}, 2-RF {d2:.3f}; 1-RF at 50 steps {d1_many:.3f}")
    assert d2 < 0.5 * d1, (d1, d2)
    s1 = straightness(euler_sample(one_rf, noise, 20, return_velocities=True)[1]).mean()
    s2 = straightness(euler_sample(two_rf, noise, 20, return_velocities=True)[1]).mean()
    print(f"straightness: 1-RF {s1:.4f}, 2-RF {s2:.4f}")
    assert s2 < 0.5 * s1, (s1, s2)


def test_straightness_is_zero_for_a_straight_flow_and_euler_is_exact_there():
    target = torch.tensor([[1.0, -1.0]])

    def straight(x, t):  # the exact velocity of the line from x at t to `target`: constant along it
        return (x - target) / t[:, None]

    noise = torch.randn(4, 2)
    one, (many, velocities) = euler_sample(straight, noise, 1), euler_sample(straight, noise, 8, True)
    torch.testing.assert_close(one, target.expand(4, 2))
    torch.testing.assert_close(many, target.expand(4, 2))
    torch.testing.assert_close(straightness(velocities), torch.zeros(4), atol=1e-10, rtol=0)

    def curved(x, t):
        return torch.stack([torch.sin(6 * t), torch.cos(6 * t)], dim=1).expand_as(x)

    assert (straightness(euler_sample(curved, noise, 8, True)[1]) > 0.1).all()
