"""The LeRobot config surface beyond the fixture's defaults, checked against a literal LeRobot-style reference."""

import pytest
import torch

from smolvla import SmolVLAPolicy
from tests.conftest import PARITY_DIR, make_batch
from tests.model.reference import reference_velocity


def _tiny(**overrides):
    torch.manual_seed(0)
    return SmolVLAPolicy.from_preset("tiny", **overrides).eval()


def _velocities(policy, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    prefix = policy.prepare_observation(batch)
    shape = (batch["observation.state"].shape[0], policy.config.chunk_size, policy.config.max_action_dim)
    x_t = torch.randn(shape, generator=g)
    time = torch.rand(shape[0], generator=g)
    with torch.no_grad():
        ours = policy.model.velocity(policy.model.encode(prefix), x_t, time)
        ref = reference_velocity(policy, prefix, x_t, time)
    return ours, ref


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"self_attn_every_n_layers": 3},
        {"self_attn_every_n_layers": 0},  # every layer cross-attends
        {"attention_mode": "self_attn"},
        {"num_expert_layers": 2},  # expert paired with every other backbone layer
        {"num_expert_layers": 2, "self_attn_every_n_layers": 3},
        {"num_vlm_layers": 3, "num_expert_layers": 1},
        {"prefix_length": 40},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults",
)
def test_matches_reference(overrides):
    policy = _tiny(**overrides)
    ours, ref = _velocities(policy, make_batch(policy))
    assert ref.abs().max() > 1e-2  # a non-trivial function
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_reference_matches_fixture(parity_batch, parity_io):
    """The reference itself reproduces LeRobot's fixture, so agreeing with it means agreeing with LeRobot."""
    policy = SmolVLAPolicy.from_pretrained(PARITY_DIR)
    prefix = policy.prepare_observation(parity_batch)
    t = parity_io["time"][:, None, None]
    x_t = t * parity_io["noise"] + (1 - t) * parity_io["actions_padded"]
    with torch.no_grad():
        v = reference_velocity(policy, prefix, x_t, parity_io["time"])
    assert (v - parity_io["v_t"]).abs().max() <= 1e-4


def test_expert_layer_pairing_builds_cross_projections_where_used():
    policy = _tiny(num_expert_layers=2, self_attn_every_n_layers=3)
    vwe = policy.model.vlm_with_expert
    kv_width = vwe.num_kv_heads * vwe.head_dim
    # backbone layers 0 (SA) and 2 (CA) carry expert layers 0 and 1
    assert [(p.vlm, p.expert, p.cross) for p in vwe.plan if p.expert is not None] == [(0, 0, False), (2, 1, True)]
    assert vwe.lm_expert.layers[0].self_attn.k_proj.in_features == vwe.expert_hidden_size
    assert vwe.lm_expert.layers[1].self_attn.k_proj.in_features == kv_width


def test_camera_padding_mask_hides_camera():
    policy = _tiny(
        input_features={
            "observation.state": {"type": "STATE", "shape": [6]},
            "observation.images.top": {"type": "VISUAL", "shape": [3, 64, 64]},
            "observation.images.wrist": {"type": "VISUAL", "shape": [3, 48, 64]},
        }
    )
    batch = make_batch(policy)
    batch["observation.images.wrist_padding_mask"] = torch.tensor([True, False])
    noise = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim)
    first = policy.predict_chunk(batch, noise=noise)
    batch["observation.images.wrist"] = torch.rand_like(batch["observation.images.wrist"])
    second = policy.predict_chunk(batch, noise=noise)
    torch.testing.assert_close(first[1], second[1], atol=1e-5, rtol=0)  # masked: content cannot matter
    assert (first[0] - second[0]).abs().max() > 1e-3  # unmasked: it does
    _, pads, _ = policy.model.embed_prefix(policy.prepare_observation(batch))
    # 16 tokens per camera in the tiny preset; the wrist block is the second
    assert pads[1, 16:32].sum() == 0 and pads[0, 16:32].all()


def test_empty_cameras_are_masked_placeholders():
    policy = _tiny(empty_cameras=1)
    assert "observation.images.empty_camera_0" in policy.config.image_features
    batch = make_batch(policy)
    assert "observation.images.empty_camera_0" not in batch
    prefix = policy.prepare_observation(batch)
    assert len(prefix.images) == 2
    assert torch.all(prefix.images[1] == -1) and not prefix.image_masks[1].any()
    noise = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim)
    absent = policy.predict_chunk(batch, noise=noise)
    # Supplying the placeholder explicitly, masked out, computes the same thing.
    batch["observation.images.empty_camera_0"] = torch.rand(2, 3, 30, 40)
    batch["observation.images.empty_camera_0_padding_mask"] = torch.zeros(2, dtype=torch.bool)
    torch.testing.assert_close(policy.predict_chunk(batch, noise=noise), absent, atol=1e-5, rtol=0)


def test_image_special_tokens_from_vlm_tokenizer(parity_batch, tmp_path):
    base = SmolVLAPolicy.from_pretrained(PARITY_DIR)
    base_embs, _, _ = base.model.embed_prefix(base.prepare_observation(parity_batch))
    # A checkpoint with add_image_special_tokens=true whose vlm/ tokenizer has the fixture's special ids.
    base.config = base.config.replace(add_image_special_tokens=True)
    base.save_pretrained(tmp_path / "ckpt")
    policy = SmolVLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert (policy.backbone.fake_image_token_id, policy.backbone.global_image_token_id) == (518, 481)
    embs, pads, flags = policy.model.embed_prefix(policy.prepare_observation(parity_batch))
    assert embs.shape[1] == base_embs.shape[1] + 2 * 3  # [fake, global] ... [fake] around each of 2 cameras
    table = policy.model.vlm_with_expert.text_model.embed_tokens.weight
    torch.testing.assert_close(embs[0, 0], table[518])
    torch.testing.assert_close(embs[0, 1], table[481])
    torch.testing.assert_close(embs[0, 6], table[518])  # after the 4 image tokens
    torch.testing.assert_close(embs[:, 2:6], base_embs[:, 0:4])
    assert pads[:, :7].all() and not flags[:, :-1].any()


def test_special_tokens_need_a_tokenizer(tmp_path):
    policy = _tiny()
    policy.config = policy.config.replace(add_image_special_tokens=True)
    policy.save_pretrained(tmp_path / "ckpt")  # tiny preset: its config in vlm/, no tokenizer (none was given)...
    loaded = SmolVLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert loaded.backbone.fake_image_token_id == 49189  # ...so the preset's ids (SmolVLM2's)
    (tmp_path / "vlm").mkdir()
    (tmp_path / "vlm" / "config.json").write_text((PARITY_DIR / "vlm" / "config.json").read_text())
    from smolvla.errors import ConfigError
    from smolvla.model.backbone import resolve_backbone

    with pytest.raises(ConfigError, match=r"tokenizer\.json"):
        resolve_backbone(str(tmp_path / "vlm"), need_special_ids=True)
