"""save_pretrained / from_pretrained: LeRobot layout, bit-identical round trip, strict and atomic."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import smolvla.model.checkpoint
from smolvla import CheckpointError, ConfigError, SmolVLAPolicy
from smolvla.model.backbone import (
    BACKBONE_PRESETS,
    FAKE_IMAGE_TOKEN,
    GLOBAL_IMAGE_TOKEN,
    SMOLVLM2_500M,
    TINY_BACKBONE,
    Backbone,
)
from smolvla.model.checkpoint import read_weights, split_legacy_stats, write_pretrained
from tests.conftest import PARITY_DIR, make_batch


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SmolVLAPolicy.from_preset("tiny")


def test_round_trip_is_bit_identical(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "ckpt")
    # The tiny backbone is no hub repository: its config travels in vlm/ (SmolVLM2 would be named by its hub id).
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors", "vlm"]
    loaded = SmolVLAPolicy.from_pretrained(tmp_path / "ckpt")
    ours, theirs = tiny.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.config.vlm_model_name == "vlm" and loaded.backbone.config == tiny.backbone.config
    assert loaded.config.replace(vlm_model_name=tiny.config.vlm_model_name) == tiny.config
    batch = make_batch(tiny)
    noise = torch.randn(2, tiny.config.chunk_size, tiny.config.max_action_dim)
    assert torch.equal(tiny.predict_chunk(batch, noise=noise), loaded.predict_chunk(batch, noise=noise))


def test_written_layout_is_lerobots(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    lerobot = json.loads((PARITY_DIR / "config.json").read_text())
    assert set(config) == set(lerobot)  # every LeRobot SmolVLAConfig field, nothing else
    assert config["type"] == "smolvla"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert all(k.startswith("model.") for k in f.keys())  # noqa: SIM118


def test_fixture_resaves_self_contained(tmp_path):
    policy = SmolVLAPolicy.from_pretrained(PARITY_DIR)
    policy.save_pretrained(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["vlm_model_name"] == "vlm"
    assert (tmp_path / "copy" / "vlm" / "tokenizer.json").is_file()
    again = SmolVLAPolicy.from_pretrained(tmp_path / "copy")
    assert again.backbone.config == policy.backbone.config


def _write(tmp_path, state_dict):
    ckpt = tmp_path / "bad"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((PARITY_DIR / "config.json").read_text())
    (ckpt / "vlm").symlink_to(PARITY_DIR / "vlm")
    save_file(state_dict, str(ckpt / "model.safetensors"))
    return ckpt


@pytest.fixture
def fixture_weights():
    return load_file(str(PARITY_DIR / "model.safetensors"))


def test_missing_key_is_an_error(tmp_path, fixture_weights):
    del fixture_weights["model.state_proj.bias"]
    with pytest.raises(CheckpointError, match=r"missing 1: model\.state_proj\.bias"):
        SmolVLAPolicy.from_pretrained(_write(tmp_path, fixture_weights))


def test_unexpected_key_is_an_error(tmp_path, fixture_weights):
    fixture_weights["model.extra_head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected 1: model\.extra_head\.weight"):
        SmolVLAPolicy.from_pretrained(_write(tmp_path, fixture_weights))


def test_mis_shaped_tensor_is_an_error(tmp_path, fixture_weights):
    fixture_weights["model.action_out_proj.weight"] = torch.zeros(16, 48)
    with pytest.raises(
        CheckpointError, match=r"model\.action_out_proj\.weight: checkpoint \(16, 48\) vs model \(32, 48\)"
    ):
        SmolVLAPolicy.from_pretrained(_write(tmp_path, fixture_weights))


def test_corrupt_weights_file_is_an_error(tmp_path, fixture_weights):
    ckpt = _write(tmp_path, fixture_weights)
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        SmolVLAPolicy.from_pretrained(ckpt)


def test_compiled_prefix_and_legacy_normalization_buffers(tmp_path, fixture_weights):
    renamed = {k.replace("model.", "model._orig_mod.", 1): v for k, v in fixture_weights.items()}
    renamed["normalize_inputs.buffer_observation_state.mean"] = torch.arange(7.0)
    directory = _write(tmp_path, renamed)
    policy = SmolVLAPolicy.from_pretrained(directory)
    assert torch.equal(policy.model.state_proj.bias, fixture_weights["model.state_proj.bias"])
    _, stats = split_legacy_stats(read_weights(directory / "model.safetensors"))
    assert torch.equal(stats["normalize_inputs.buffer_observation_state.mean"], torch.arange(7.0))


def test_not_a_checkpoint_and_bad_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        SmolVLAPolicy.from_pretrained(tmp_path)
    raw = json.loads((PARITY_DIR / "config.json").read_text())
    raw["num_stepz"] = 3
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"unknown SmolVLA config key\(s\) \['num_stepz'\]"):
        SmolVLAPolicy.from_pretrained(tmp_path)


def test_unresolvable_backbone_names_where_it_looked(tmp_path):
    raw = json.loads((PARITY_DIR / "config.json").read_text())
    raw["vlm_model_name"] = "someone/unknown-vlm"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="cannot resolve backbone 'someone/unknown-vlm'"):
        SmolVLAPolicy.from_pretrained(tmp_path)
    # ...and the explicit override supplies it.
    (tmp_path / "model.safetensors").write_bytes((PARITY_DIR / "model.safetensors").read_bytes())
    policy = SmolVLAPolicy.from_pretrained(tmp_path, vlm_config=PARITY_DIR / "vlm")
    assert policy.model.vlm_with_expert.hidden_size == 64


def test_failed_save_leaves_previous_checkpoint(tiny, tmp_path, monkeypatch):
    tiny.save_pretrained(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(smolvla.model.checkpoint, "save_file", boom)  # the weights write fails half-way
    with pytest.raises(OSError, match="disk full"):
        tiny.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp directories left behind


def test_a_hub_backbone_is_named_by_its_id_others_travel_in_vlm(tmp_path):
    """SmolVLM2 (a real repository) keeps LeRobot's convention; the tiny preset (none) is written into vlm/."""
    for name, expected in ((SMOLVLM2_500M, SMOLVLM2_500M), (TINY_BACKBONE, "vlm")):
        config, ids = BACKBONE_PRESETS[name]
        backbone = Backbone(config, ids[FAKE_IMAGE_TOKEN], ids[GLOBAL_IMAGE_TOKEN])
        out = tmp_path / name.replace("/", "_")
        write_pretrained(out, {"config.json": {"vlm_model_name": name}}, {"w": torch.zeros(1)}, backbone)
        assert json.loads((out / "config.json").read_text())["vlm_model_name"] == expected
        assert (out / "vlm").is_dir() == (expected == "vlm")
