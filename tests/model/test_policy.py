"""Policy behaviour: sampling paths, action queue, padding of small robots, learning, and bad input."""

import pytest
import torch

from smolvla import BatchError, ConfigError, SmolVLAPolicy
from smolvla.model.flow_matching import VLAFlowMatching
from smolvla.model.rectified_flow import euler_sample
from tests.conftest import make_batch
from tests.model.reference import reference_velocity


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SmolVLAPolicy.from_preset("tiny").eval()


def test_cached_sampling_equals_the_joint_uncached_reference(tiny):
    """The prefix cache (encoded once per chunk, SDPA) against LeRobot's literal layer loop, prefix and suffix
    through every layer jointly at every denoising step."""
    batch = make_batch(tiny)
    noise = torch.randn(2, tiny.config.chunk_size, tiny.config.max_action_dim)
    cached = tiny.predict_chunk(batch, noise=noise, num_steps=4)
    prefix = tiny.prepare_observation(batch)
    with torch.no_grad():
        uncached = euler_sample(lambda x_t, t: reference_velocity(tiny, prefix, x_t, t), noise, 4)
    torch.testing.assert_close(cached, uncached[..., : tiny.config.action_dim], rtol=0, atol=1e-5)
    assert not torch.allclose(cached, noise[..., : tiny.config.action_dim])


def test_training_velocity_equals_first_sampling_velocity(tiny):
    batch = make_batch(tiny)
    prefix = tiny.prepare_observation(batch)
    noise = torch.randn(2, tiny.config.chunk_size, tiny.config.max_action_dim)
    actions, _ = tiny.prepare_actions(batch)
    with torch.no_grad():
        train_v = tiny.model.losses(prefix, actions, noise, torch.ones(2))["v_t"]
        _, sample_v = tiny.model.sample(prefix, noise, 4, return_velocities=True)
    assert torch.equal(train_v, sample_v[0])


def test_predict_chunk_shape_steps_and_determinism(tiny):
    batch = make_batch(tiny)
    torch.manual_seed(5)
    a = tiny.predict_chunk(batch)
    torch.manual_seed(5)
    b = tiny.predict_chunk(batch)
    assert a.shape == (2, tiny.config.chunk_size, tiny.config.action_dim)
    assert torch.equal(a, b)
    noise = torch.randn(2, tiny.config.chunk_size, tiny.config.max_action_dim)
    one = tiny.predict_chunk(batch, noise=noise, num_steps=1)
    ten = tiny.predict_chunk(batch, noise=noise, num_steps=10)
    assert not torch.allclose(one, ten)
    # one Euler step is exactly x0 = noise - v(noise, t=1)
    prefix = tiny.prepare_observation(batch)
    v = tiny.model.velocity(tiny.model.encode(prefix), noise, torch.ones(2))
    torch.testing.assert_close(one, (noise - v)[..., : tiny.config.action_dim])


@pytest.mark.parametrize("whole_chunk", [False, True])
def test_compiled_inference_matches_eager(tiny, whole_chunk):
    batch = make_batch(tiny)
    noise = torch.randn(2, tiny.config.chunk_size, tiny.config.max_action_dim)
    eager = tiny.predict_chunk(batch, noise=noise, num_steps=2)
    compiled = SmolVLAPolicy(tiny.config, tiny.backbone)
    compiled.load_state_dict(tiny.state_dict())
    compiled.eval().compile_inference(whole_chunk=whole_chunk)
    torch.testing.assert_close(compiled.predict_chunk(batch, noise=noise, num_steps=2), eager, atol=1e-4, rtol=1e-4)
    compiled_functions = {"sample_chunk"} if whole_chunk else {"encode", "velocity"}
    assert compiled_functions <= set(vars(compiled.model)) and not compiled_functions & set(vars(tiny.model))


def test_batched_equals_one_at_a_time(tiny):
    batch = make_batch(tiny, batch_size=3)
    noise = torch.randn(3, tiny.config.chunk_size, tiny.config.max_action_dim)
    together = tiny.predict_chunk(batch, noise=noise)
    for i in range(3):
        single = {k: v[i : i + 1] for k, v in batch.items()}
        torch.testing.assert_close(
            tiny.predict_chunk(single, noise=noise[i : i + 1]), together[i : i + 1], atol=1e-5, rtol=1e-4
        )


def test_select_action_queue(tiny, monkeypatch):
    policy = SmolVLAPolicy(tiny.config.replace(n_action_steps=3), tiny.backbone)
    calls = []
    chunks = [torch.arange(20.0).view(1, 10, 2) + 100 * i for i in range(4)]

    def fake_predict(batch):
        calls.append(1)
        return chunks[len(calls) - 1]

    monkeypatch.setattr(policy, "predict_chunk", fake_predict)
    got = [policy.select_action({})[0, 0].item() for _ in range(7)]
    assert got == [0.0, 2.0, 4.0, 100.0, 102.0, 104.0, 200.0]
    assert len(calls) == 3
    policy.reset()
    policy.select_action({})
    assert len(calls) == 4


def test_small_robot_padded_in_and_cropped_out():
    """A 16-D robot in the 32-D model: loss over its 16 dims only, actions cropped to 16."""
    torch.manual_seed(0)
    policy = SmolVLAPolicy.from_preset(
        "tiny",
        input_features={
            "observation.state": {"type": "STATE", "shape": [16]},
            "observation.images.top": {"type": "VISUAL", "shape": [3, 64, 64]},
        },
        output_features={"action": {"type": "ACTION", "shape": [16]}},
    )
    batch = make_batch(policy)
    prefix = policy.prepare_observation(batch)
    assert prefix.state.shape == (2, 32) and torch.all(prefix.state[:, 16:] == 0)
    assert policy.predict_chunk(batch).shape == (2, 10, 16)
    noise, time = torch.randn(2, 10, 32), torch.rand(2)
    actions, _ = policy.prepare_actions(batch)
    raw = policy.model.losses(prefix, actions, noise, time)["losses_raw"]
    valid = (~batch["action_is_pad"]).float()[..., None]
    expected = (raw[..., :16] * valid).sum() / (valid.sum() * 16)
    torch.testing.assert_close(policy.compute_loss(batch, noise=noise, time=time), expected)
    per_sample = policy.compute_loss(batch, noise=noise, time=time, reduction="none")
    torch.testing.assert_close(per_sample[0], raw[0, :, :16].mean())


def test_time_sampler_is_beta_1p5_1():
    policy = SmolVLAPolicy.from_preset("tiny")
    t = policy.model.sample_time(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.min() >= 0.001 and t.max() <= 1.0
    # Beta(1.5, 1): mean 0.6, P(x < 0.5) = 0.5 ** 1.5
    assert abs(((t - 0.001) / 0.999).mean().item() - 0.6) < 3e-3
    assert abs(((t - 0.001) / 0.999 < 0.5).float().mean().item() - 0.5**1.5) < 3e-3


def test_tiny_policy_overfits_a_fixed_batch():
    torch.manual_seed(0)
    policy = SmolVLAPolicy.from_preset("tiny", train_expert_only=False, freeze_vision_encoder=False)
    batch = make_batch(policy, batch_size=2)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 10, 32, generator=g)
    time = torch.rand(2, generator=g)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    first = policy.compute_loss(batch, noise=noise, time=time).item()
    for _ in range(150):
        loss = policy.compute_loss(batch, noise=noise, time=time)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())


def test_default_freezing_trains_expert_only(tiny):
    trainable = {n for n, p in tiny.named_parameters() if p.requires_grad}
    assert trainable and all(".vlm." not in n for n in trainable)
    assert "model.state_proj.weight" in trainable
    batch = make_batch(tiny)
    tiny.compute_loss(batch).backward()
    assert all(p.grad is not None for n, p in tiny.named_parameters() if p.requires_grad)
    tiny.zero_grad(set_to_none=True)


def _loss_and_grads(policy, batch, full_prefix_autograd: bool, monkeypatch):
    if full_prefix_autograd:
        monkeypatch.setattr(VLAFlowMatching, "state_grad_row", lambda self, embs, flags: None)
    noise, time = policy.sample_noise_and_time(batch["action"].shape[0], torch.Generator().manual_seed(1))
    loss = policy.compute_loss(batch, noise=noise, time=time)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    policy.zero_grad(set_to_none=True)
    monkeypatch.undo()
    return loss.detach(), grads


@pytest.mark.parametrize(
    "overrides",
    [{}, {"attention_mode": "self_attn"}, {"add_image_special_tokens": True}, {"prefix_length": 96}],  # 96: padded
)
def test_frozen_backbone_backprops_through_the_state_row_only(tiny, overrides, monkeypatch):
    """With the backbone frozen only the state token's row is recomputed with autograd: the loss is the same to the
    bit as autograd through the whole prefix, every expert gradient too, and state_proj's within float rounding."""
    torch.manual_seed(0)
    policy = SmolVLAPolicy(tiny.config.replace(**overrides), tiny.backbone).train()
    batch = make_batch(policy, batch_size=3)
    prefix = policy.prepare_observation(batch)
    embs, pads, flags = policy.model.embed_prefix(prefix)
    if policy.config.prefix_length > 0:  # padded past the state token: its row is read from the flags
        assert embs.shape[1] == policy.config.prefix_length and not pads[0, -1]
    assert policy.model.state_grad_row(embs, flags) == int(flags[0].nonzero())  # the split path is the one taken
    split_loss, split = _loss_and_grads(policy, batch, False, monkeypatch)
    full_loss, full = _loss_and_grads(policy, batch, True, monkeypatch)
    assert torch.equal(split_loss, full_loss)
    assert split.keys() == full.keys() and "model.state_proj.weight" in split
    for name in split:
        if name.startswith("model.state_proj."):
            torch.testing.assert_close(split[name], full[name], rtol=1e-5, atol=1e-8)
        else:
            assert torch.equal(split[name], full[name]), name
    policy.model.vlm_with_expert.vlm.model.text_model.requires_grad_(True)  # a trainable backbone: whole prefix
    with torch.no_grad():
        assert policy.model.state_grad_row(embs, flags) is None  # and inference never takes the split either
    assert policy.model.state_grad_row(policy.model.embed_prefix(prefix)[0], flags) is None


# --- bad input: one clear error naming the thing and what was expected ---


def _bad(tiny, mutate, match):
    batch = make_batch(tiny)
    mutate(batch)
    with pytest.raises(BatchError, match=match):
        tiny.compute_loss(batch)


def test_missing_camera(tiny):
    _bad(tiny, lambda b: b.pop("observation.images.top"), r"camera 'observation.images.top' is missing")


def test_wrong_state_dim(tiny):
    _bad(tiny, lambda b: b.update({"observation.state": torch.zeros(2, 7)}), r"has dim 7, expected 6")


def test_language_too_long(tiny):
    def long_language(b):
        b["observation.language.tokens"] = torch.ones(2, 49, dtype=torch.long)
        b["observation.language.attention_mask"] = torch.ones(2, 49, dtype=torch.bool)

    _bad(tiny, long_language, r"49 tokens, longer than tokenizer_max_length=48")


def test_nan_in_state_and_action(tiny):
    _bad(tiny, lambda b: b["observation.state"].__setitem__((0, 0), float("nan")), "observation.state.*NaN")
    _bad(tiny, lambda b: b["action"].__setitem__((1, 2, 3), float("inf")), "action.*NaN or Inf")


def test_uint8_image_and_wrong_action_shape(tiny):
    _bad(
        tiny,
        lambda b: b.update({"observation.images.top": torch.zeros(2, 3, 64, 64, dtype=torch.uint8)}),
        "must be float in \\[0, 1\\]",
    )
    _bad(tiny, lambda b: b.update({"action": torch.zeros(2, 5, 6)}), r"\(B, chunk_size, action_dim\)")


def test_untokenized_task_string(tiny):
    def task_only(b):
        del b["observation.language.tokens"]
        b["task"] = ["pick the cube"] * 2

    _bad(tiny, task_only, "run the language processor")


def test_bad_config_values():
    with pytest.raises(ConfigError, match="unknown preset"):
        SmolVLAPolicy.from_preset("huge")
    with pytest.raises(ConfigError, match="unknown SmolVLA config key"):
        SmolVLAPolicy.from_preset("tiny", chunk=5)
    with pytest.raises(ConfigError, match="n_action_steps"):
        SmolVLAPolicy.from_preset("tiny", n_action_steps=11)
    with pytest.raises(ConfigError, match="must divide"):
        SmolVLAPolicy.from_preset("tiny", num_expert_layers=3)
