"""Training-time real-time chunking (arXiv 2512.05964): given chunk steps enter at flow time 0 and leave the loss;
at inference they are held, so the chunk repeats them exactly; checkpoints say they were trained for it while
config.json stays LeRobot's."""

import json

import pytest
import torch

from smolvla import BatchError, ConfigError, SmolVLAPolicy
from smolvla.model.config import CONFIG_NAME, EXTRA_CONFIG_NAME
from smolvla.model.rectified_flow import ActionPrefix, prefix_time
from tests.conftest import make_batch


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return SmolVLAPolicy.from_preset("tiny", rtc_training_max_delay=4).eval()


def test_per_step_time_equal_everywhere_is_the_per_sample_time(trained):
    batch = make_batch(trained)
    prefix = trained.prepare_observation(batch)
    x_t = torch.randn(2, 10, 32)
    cache = trained.model.encode(prefix)
    time = torch.tensor([0.3, 0.8])
    per_step = trained.model.velocity(cache, x_t, time[:, None].expand(2, 10))
    torch.testing.assert_close(per_step, trained.model.velocity(cache, x_t, time), rtol=0, atol=0)


def test_training_draws_given_prefixes_and_the_loss_leaves_them_out(trained):
    noise, time = trained.sample_noise_and_time(512, torch.Generator().manual_seed(0))
    assert time.shape == (512, 10)
    given = (time == 0).sum(dim=1)
    assert set(given.tolist()) == {0, 1, 2, 3, 4}  # half plain, half d uniform in 1..max
    assert 0.4 < (given == 0).float().mean() < 0.6
    assert torch.equal(time == 0, torch.arange(10) < given[:, None])  # always a leading run
    assert (time[time > 0] == time[:, -1:].expand_as(time)[time > 0]).all()  # the rest share the sample's t

    batch = make_batch(trained)
    noise, time = torch.randn(2, 10, 32), prefix_time(torch.tensor([0.4, 0.7]), torch.arange(10) < 3)
    loss = trained.compute_loss(batch, noise=noise, time=time)
    # A given step's input is its clean action whatever the noise, and its error is not counted: noise there is inert.
    other = noise.clone()
    other[:, :3] = torch.randn(2, 3, 32)
    torch.testing.assert_close(trained.compute_loss(batch, noise=other, time=time), loss, rtol=0, atol=0)
    other[:, 3] += 1.0  # ... but not past the prefix
    assert not torch.allclose(trained.compute_loss(batch, noise=other, time=time), loss)
    # The loss is the plain rule (mean over valid elements) over the steps after the prefix.
    prefix = trained.prepare_observation(batch)
    actions, valid = trained.prepare_actions(batch)
    with torch.no_grad():
        raw = trained.model.losses(prefix, actions, noise, time)["losses_raw"][..., : trained.config.action_dim]
    counted = valid * (torch.arange(10) >= 3)[None, :, None]
    torch.testing.assert_close(loss, (raw * counted).sum() / counted.sum())


def test_sampling_repeats_the_given_steps_and_continues_from_them(trained):
    batch = make_batch(trained, batch_size=3)
    noise = torch.randn(3, 10, 32, generator=torch.Generator().manual_seed(1))
    d = trained.config.action_dim
    queued = [torch.full((6, d), 0.5), torch.full((6, d), -1.0), torch.zeros(0, d)]
    given = ActionPrefix.from_queued(queued, [4, 2, 0], horizon=10, width=32)
    plain = trained.predict_chunk(batch, noise=noise, num_steps=5)
    chunk = trained.predict_chunk(batch, noise=noise, num_steps=5, action_prefix=given)
    assert torch.equal(chunk[0, :4], queued[0][:4]) and torch.equal(chunk[1, :2], queued[1][:2])
    assert not torch.allclose(chunk[0, 4:], plain[0, 4:])  # the rest sees the given steps
    # A sample given nothing is sampled as without a prefix (per-step times equal to its t).
    torch.testing.assert_close(chunk[2], plain[2], rtol=0, atol=1e-6)


def test_a_prefix_is_refused_by_an_untrained_policy_and_beyond_the_trained_delay(trained):
    torch.manual_seed(0)
    plain = SmolVLAPolicy.from_preset("tiny").eval()
    batch = make_batch(plain, batch_size=1)
    given = ActionPrefix.from_queued([torch.zeros(5, 6)], [5], horizon=10, width=32)
    with pytest.raises(BatchError, match="not trained for training-time"):
        plain.predict_chunk(batch, action_prefix=given)
    with pytest.raises(BatchError, match="at most 4"):
        trained.predict_chunk(batch, action_prefix=given)
    with pytest.raises(ConfigError, match="rtc_training_max_delay"):
        SmolVLAPolicy.from_preset("tiny", rtc_training_max_delay=10)  # chunk 10: the prefix must leave a step


def test_checkpoints_record_the_mode_beside_a_lerobot_config(trained, tmp_path):
    trained.save_pretrained(tmp_path / "rtc")
    assert "rtc_training_max_delay" not in json.loads((tmp_path / "rtc" / CONFIG_NAME).read_text())
    assert json.loads((tmp_path / "rtc" / EXTRA_CONFIG_NAME).read_text()) == {"rtc_training_max_delay": 4}
    assert SmolVLAPolicy.from_pretrained(tmp_path / "rtc").config.rtc_training_max_delay == 4
    SmolVLAPolicy.from_preset("tiny").save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / EXTRA_CONFIG_NAME).exists()
