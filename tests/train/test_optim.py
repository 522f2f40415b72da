import math

import pytest

from smolvla import SmolVLAPolicy
from smolvla.errors import ConfigError
from smolvla.model.config import SmolVLAConfig
from smolvla.train import Schedule, lr_factor, make_optimizer, make_scheduler

PRESET = SmolVLAConfig()  # LeRobot's SmolVLA optimizer/scheduler fields


def test_preset_schedule_at_known_steps():
    schedule = Schedule.for_run(PRESET, total_steps=100_000)
    assert schedule == Schedule(1e-4, 2.5e-6, 1_000, 30_000)
    lr = lambda step: schedule.peak_lr * lr_factor(step, schedule)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4 / 1001)  # warm-up starts at peak / (warm-up + 1), not at 0
    assert lr(500) == pytest.approx(1e-4 * (1 / 1001 + (1 - 1 / 1001) * 0.5))
    # The cosine counts from step 0: at the end of warm-up it is already cos(pi / 30) into its decay.
    assert lr(1_000) == pytest.approx(2.5e-6 + (1e-4 - 2.5e-6) * 0.5 * (1 + math.cos(math.pi / 30)))
    assert lr(15_000) == pytest.approx((1e-4 + 2.5e-6) / 2)
    assert lr(30_000) == pytest.approx(2.5e-6) and lr(80_000) == pytest.approx(2.5e-6)
    warm = [lr(s) for s in range(0, 1_000, 50)]
    decay = [lr(s) for s in range(1_000, 30_001, 500)]
    assert warm == sorted(warm) and decay == sorted(decay, reverse=True)


def test_short_runs_scale_warmup_and_decay():
    schedule = Schedule.for_run(PRESET, total_steps=3_000)
    assert (schedule.warmup_steps, schedule.decay_steps) == (100, 3_000)
    assert lr_factor(3_000, schedule) == pytest.approx(2.5e-6 / 1e-4)
    no_warmup = Schedule(1e-3, 1e-5, 0, 10)
    assert lr_factor(0, no_warmup) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="total_steps >= 1"):
        Schedule.for_run(PRESET, total_steps=0)


def test_optimizer_and_scheduler_follow_the_policy_config():
    policy = SmolVLAPolicy.from_preset("tiny", optimizer_lr=3e-4, scheduler_warmup_steps=4, scheduler_decay_steps=20)
    optimizer = make_optimizer(policy)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert 0 < len(trainable) < len(list(policy.parameters()))  # train_expert_only: the backbone is frozen
    group = optimizer.param_groups[0]
    assert {id(p) for p in group["params"]} == {id(p) for p in trainable}
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.95), 1e-8, 1e-10)
    schedule = Schedule.for_run(policy.config, total_steps=50)
    scheduler = make_scheduler(optimizer, schedule)
    seen = []
    for _ in range(25):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([3e-4 * lr_factor(s, schedule) for s in range(25)])


def test_no_trainable_parameters_is_an_error():
    policy = SmolVLAPolicy.from_preset("tiny")
    for p in policy.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        make_optimizer(policy)
