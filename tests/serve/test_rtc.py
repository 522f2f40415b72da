"""Real-time chunking's guided sampling (arXiv 2506.07339) on a flow whose answer is known: the soft mask is the
paper's formula, frozen steps are inpainted, steps the mask ignores are untouched, zero weights change nothing."""

import math

import pytest
import torch

from smolvla.model.rectified_flow import Inpainting, euler_sample, guided_euler_sample, soft_mask


def gaussian_velocity(x, t):
    """The exact flow-matching velocity E[X0 − X1 | x_t] for noise X0 ~ N(0, 1) and actions X1 ~ N(0, 1): each
    coordinate on its own, so a coordinate's guidance cannot leak into another."""
    t = t.reshape(-1, *([1] * (x.ndim - 1)))
    return (2 * t - 1) * x / (t**2 + (1 - t) ** 2)


def test_soft_mask_is_the_papers_eq_5():
    horizon, overlap, frozen = 10, 7, 2
    expected = []
    for i in range(horizon):
        c = (overlap - i) / (overlap - frozen + 1)
        expected.append(1.0 if i < frozen else c * (math.exp(c) - 1) / (math.e - 1) if i < overlap else 0.0)
    torch.testing.assert_close(soft_mask(horizon, overlap, frozen), torch.tensor(expected))
    assert soft_mask(5, 0, 0).abs().sum() == 0  # no prefix: free sampling
    with pytest.raises(ValueError, match="frozen"):
        soft_mask(5, 3, 4)


def test_guidance_inpaints_the_frozen_steps_and_leaves_unweighted_ones_alone():
    noise = torch.randn(64, 8, 3, generator=torch.Generator().manual_seed(0))
    prefix = torch.full((4, 2), 2.0)  # 4 queued actions over the first 2 action dims, the first 2 of them frozen
    inpainting = Inpainting.from_queued([prefix] * 64, [2] * 64, horizon=8, width=3)
    assert inpainting.weights[0, :, 2].abs().sum() == 0  # the padded action dim is never guided
    plain = euler_sample(gaussian_velocity, noise, 10)
    guided = guided_euler_sample(gaussian_velocity, noise, 10, inpainting)
    frozen_error = (guided[:, :2, :2] - 2).abs().mean()
    assert frozen_error < 0.1 < 1.5 < (plain[:, :2, :2] - 2).abs().mean()
    decaying_error = (guided[:, 2:4, :2] - 2).abs().mean()
    assert frozen_error < decaying_error < (plain[:, 2:4, :2] - 2).abs().mean()  # softly pulled
    torch.testing.assert_close(guided[:, 4:], plain[:, 4:], rtol=0, atol=0)  # beyond the overlap: unchanged
    torch.testing.assert_close(guided[..., 2], plain[..., 2], rtol=0, atol=0)
    no_prefix = Inpainting.from_queued([torch.zeros(0, 2)] * 64, [0] * 64, horizon=8, width=3)
    assert torch.equal(guided_euler_sample(gaussian_velocity, noise, 10, no_prefix), plain)


def test_guidance_refuses_inference_mode():
    inpainting = Inpainting.from_queued([torch.zeros(2, 1)], [1], horizon=4, width=1)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="no_grad"):
        guided_euler_sample(gaussian_velocity, torch.zeros(1, 4, 1), 2, inpainting)
