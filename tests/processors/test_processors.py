"""Processor behaviour: language, normalization (incl. padding and missing stats), cameras, save/load."""

import json
import warnings

import pytest
import torch

from smolvla import BatchError, CheckpointError, ConfigError, SmolVLAPolicy
from smolvla.processors import (
    NewlineTask,
    Normalize,
    PadFeatures,
    Pipeline,
    RenameObservations,
    TaskTokenizer,
    Tokenize,
    TruncationWarning,
    Unnormalize,
    load_processors,
    make_processors,
    stats_from_legacy,
)
from smolvla.processors.normalize import SMOLVLA_NORM_MAP

TASKS = ["pick up the red cube", "open the top drawer", "push the green button to the left"]
FEATURES = {"observation.state": {"type": "STATE", "shape": [6]}, "action": {"type": "ACTION", "shape": [6]}}


@pytest.fixture(scope="module")
def tokenizer():
    return TaskTokenizer.train(TASKS, vocab_size=300)


def make_stats(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        key: {
            "mean": torch.randn(6, generator=g),
            "std": torch.rand(6, generator=g) + 0.1,
            "min": -torch.rand(6, generator=g) - 1,
            "max": torch.rand(6, generator=g) + 1,
        }
        for key in FEATURES
    }


def test_newline_appended_once():
    step = NewlineTask()
    assert step({"task": "open"})["task"] == "open\n"
    assert step({"task": "open\n"})["task"] == "open\n"
    assert step({"task": ["a", "b\n"]})["task"] == ["a\n", "b\n"]
    assert step({"observation.state": 1}) == {"observation.state": 1}


def test_padding_modes_and_right_padding(tokenizer):
    longest = Tokenize(tokenizer, max_length=48, padding="longest")({"task": TASKS})
    tokens, mask = longest["observation.language.tokens"], longest["observation.language.attention_mask"]
    lengths = [len(tokenizer.tokenizer.encode(t).ids) for t in TASKS]
    assert tokens.dtype == torch.int64 and mask.dtype == torch.bool
    assert tokens.shape == (3, max(lengths))
    assert mask.sum(1).tolist() == lengths
    for row, n in enumerate(lengths):  # right padding: real tokens first, pad id after
        assert mask[row, :n].all() and not mask[row, n:].any()
        assert (tokens[row, n:] == tokenizer.pad_token_id).all()
    fixed = Tokenize(tokenizer, max_length=48, padding="max_length")({"task": TASKS})
    assert fixed["observation.language.tokens"].shape == (3, 48)
    assert torch.equal(fixed["observation.language.tokens"][:, : tokens.shape[1]], tokens)


def test_truncation_is_reported(tokenizer):
    step = Tokenize(tokenizer, max_length=4, padding="longest")
    too_long = sum(len(tokenizer.tokenizer.encode(t).ids) > 4 for t in TASKS)
    assert too_long >= 1
    with pytest.warns(TruncationWarning, match=f"{too_long} of 3 task strings"):
        out = step({"task": TASKS})
    assert out["observation.language.tokens"].shape == (3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Tokenize(tokenizer, max_length=48)({"task": TASKS})


def test_trained_tokenizer_is_deterministic_and_roundtrips(tokenizer, tmp_path):
    again = TaskTokenizer.train(reversed(TASKS), vocab_size=300)
    assert again.tokenizer.encode(TASKS[2]).ids == tokenizer.tokenizer.encode(TASKS[2]).ids
    tokenizer.save(tmp_path)
    loaded = TaskTokenizer.from_directory(tmp_path)
    assert loaded.pad_token_id == tokenizer.pad_token_id
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(TASKS[0]).ids) == TASKS[0]


def test_missing_stats_key_is_an_error():
    stats = make_stats()
    del stats["action"]
    with pytest.raises(ConfigError, match="no normalization stats for 'action'"):
        Normalize(FEATURES, SMOLVLA_NORM_MAP, stats)
    stats = make_stats()
    del stats["observation.state"]["std"]
    with pytest.raises(ConfigError, match="lack 'std'"):
        Normalize(FEATURES, SMOLVLA_NORM_MAP, stats)
    stats = make_stats()
    stats["action"]["mean"][2] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        Unnormalize({"action": FEATURES["action"]}, SMOLVLA_NORM_MAP, stats)
    # IDENTITY features need no stats.
    Normalize({"observation.images.top": {"type": "VISUAL", "shape": [3, 8, 8]}}, SMOLVLA_NORM_MAP, {})


def test_padded_dims_use_neutral_stats():
    stats = make_stats()
    state = torch.randn(4, 6)
    normalize = Normalize(FEATURES, SMOLVLA_NORM_MAP, stats)
    narrow = normalize({"observation.state": state})["observation.state"]
    padded_in = PadFeatures({"observation.state": 32})({"observation.state": state})
    wide = normalize(padded_in)["observation.state"]
    assert wide.shape == (4, 32)
    torch.testing.assert_close(wide[:, :6], narrow)
    assert (wide[:, 6:] == 0).all()
    expected = (state - stats["observation.state"]["mean"]) / (stats["observation.state"]["std"] + 1e-8)
    torch.testing.assert_close(narrow, expected)


@pytest.mark.parametrize("mode", ["MEAN_STD", "MIN_MAX"])
def test_crop_unnormalize_inverts_normalize_pad(mode):
    stats = make_stats()
    norm_map = {"STATE": mode, "ACTION": mode}
    chunk = torch.randn(3, 10, 6) * 2
    model_space = PadFeatures({"action": 32})(Normalize(FEATURES, norm_map, stats)({"action": chunk}))
    assert model_space["action"].shape == (3, 10, 32)
    back = Unnormalize({"action": FEATURES["action"]}, norm_map, stats)(model_space)["action"]
    assert back.shape == (3, 10, 6)
    torch.testing.assert_close(back, chunk, rtol=1e-5, atol=1e-5)


def test_constant_feature_min_max_stays_finite():
    stats = make_stats()
    stats["action"]["min"] = stats["action"]["max"].clone()
    out = Normalize(FEATURES, {"ACTION": "MIN_MAX"}, stats)({"action": stats["action"]["max"][None]})
    assert torch.isfinite(out["action"]).all()


def test_rename_maps_cameras_and_masks():
    batch = {"observation.images.front": 1, "observation.images.front_padding_mask": 2, "observation.state": 3}
    out = RenameObservations({"observation.images.front": "observation.images.top"})(batch)
    assert out == {"observation.images.top": 1, "observation.images.top_padding_mask": 2, "observation.state": 3}
    with pytest.raises(ConfigError, match="same name"):
        RenameObservations({"a": "c", "b": "c"})


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return SmolVLAPolicy.from_preset("tiny").eval()


def raw_observation(camera="observation.images.top"):
    g = torch.Generator().manual_seed(1)
    return {"observation.state": torch.randn(6, generator=g), camera: torch.rand(3, 64, 64, generator=g), "task": "go"}


def test_raw_observation_to_robot_actions(policy, tokenizer):
    stats = make_stats()
    pre, post = make_processors(policy.config, stats, tokenizer)
    batch = pre(raw_observation())
    assert batch["observation.state"].shape == (1, 6)
    assert batch["task"] == ["go\n"]
    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim, generator=torch.Generator())
    chunk = policy.predict_chunk(batch, noise=noise)
    actions = post({"action": chunk})["action"]
    expected = chunk * stats["action"]["std"] + stats["action"]["mean"]
    torch.testing.assert_close(actions, expected)
    # A state already padded to max_state_dim gives the same chunk as the raw width.
    padded = PadFeatures({"observation.state": policy.config.max_state_dim})(batch)
    torch.testing.assert_close(policy.predict_chunk(padded, noise=noise), chunk)


def test_missing_camera_error_and_fill(policy, tokenizer):
    pre, _ = make_processors(policy.config, make_stats(), tokenizer)
    with pytest.raises(BatchError, match=r"camera .observation\.images\.top. is missing"):
        policy.predict_chunk(pre(raw_observation("observation.images.front")))
    renamed, _ = make_processors(
        policy.config, make_stats(), tokenizer, rename_map={"observation.images.front": "observation.images.top"}
    )
    assert policy.predict_chunk(renamed(raw_observation("observation.images.front"))).shape == (1, 10, 6)
    filled, _ = make_processors(policy.config, make_stats(), tokenizer, fill_missing_cameras=True)
    batch = filled({k: v for k, v in raw_observation().items() if k != "observation.images.top"})
    assert batch["observation.images.top"].shape == (1, 3, 64, 64)
    assert not batch["observation.images.top_padding_mask"].any()


def test_checkpoint_carries_processors(policy, tokenizer, tmp_path):
    pre, post = make_processors(policy.config, make_stats(), tokenizer)
    policy.save_pretrained(tmp_path / "ckpt", processors=(pre, post))
    spec = json.loads((tmp_path / "ckpt" / "policy_preprocessor.json").read_text())
    names = [s["registry_name"] for s in spec["steps"]]
    assert names == [
        "rename_observations_processor",
        "to_batch_processor",
        "smolvla_new_line_processor",
        "tokenizer_processor",
        "device_processor",
        "normalizer_processor",
    ]
    assert spec["steps"][5]["state_file"] == "policy_preprocessor_step_5_normalizer_processor.safetensors"
    pre2, post2 = load_processors(tmp_path / "ckpt")
    obs = raw_observation()
    a, b = pre(obs), pre2(obs)
    for key in ("observation.state", "observation.language.tokens", "observation.language.attention_mask"):
        assert torch.equal(a[key], b[key])
    chunk = torch.randn(2, 10, 6)
    assert torch.equal(post({"action": chunk})["action"], post2({"action": chunk})["action"])


def test_broken_pipeline_files(policy, tokenizer, tmp_path):
    pre, _ = make_processors(policy.config, make_stats(), tokenizer)
    pre.save(tmp_path)
    spec = json.loads((tmp_path / "policy_preprocessor.json").read_text())
    (tmp_path / spec["steps"][5]["state_file"]).unlink()
    with pytest.raises(CheckpointError, match="state file"):
        Pipeline.load(tmp_path, "policy_preprocessor")
    spec["steps"][0]["registry_name"] = "mystery_processor"
    (tmp_path / "policy_preprocessor.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="mystery_processor"):
        Pipeline.load(tmp_path, "policy_preprocessor")
    with pytest.raises(CheckpointError, match="no processor file"):
        Pipeline.load(tmp_path, "policy_postprocessor")
    # LeRobot saves only the tokenizer's hub name; without local files the error says what to copy where.
    pre.save(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    missing = r"tokenizer 'smolvla/tiny-backbone' not found.*not in the Hugging Face cache .*HF_HUB_OFFLINE=1"
    with pytest.raises(CheckpointError, match=missing):
        Pipeline.load(tmp_path, "policy_preprocessor")


def test_lerobot_pipeline_with_prefixed_stats_is_rejected(tmp_path, tokenizer):
    """A LeRobot-format file whose stats sit under a dataset prefix (#4415) fails to load instead of skipping."""
    from safetensors.torch import save_file

    tokenizer.save(tmp_path)
    stats = {f"so100.buffer.action.{k}": v for k, v in make_stats()["action"].items()}
    save_file(stats, str(tmp_path / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    spec = {
        "name": "policy_postprocessor",
        "steps": [
            {
                "registry_name": "unnormalizer_processor",
                "config": {"eps": 1e-8, "features": {"action": FEATURES["action"]}, "norm_map": SMOLVLA_NORM_MAP},
                "state_file": "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
            },
            {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
        ],
    }
    (tmp_path / "policy_postprocessor.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"no normalization stats for 'action'.*so100\.buffer\.action"):
        Pipeline.load(tmp_path, "policy_postprocessor")


def test_legacy_buffers_with_dataset_prefixes():
    stats = make_stats()
    legacy = {
        "normalize_inputs.buffer_observation_state.mean": stats["observation.state"]["mean"],
        "normalize_targets.so100_buffer_action.mean": stats["action"]["mean"],
        "normalize_targets.so100-blue_buffer_action.mean": stats["action"]["mean"] + 1,
    }
    with pytest.raises(ConfigError, match="several datasets"):
        stats_from_legacy(legacy, list(FEATURES))
    picked = stats_from_legacy(legacy, list(FEATURES), dataset="so100-blue")
    torch.testing.assert_close(picked["action"]["mean"], stats["action"]["mean"] + 1)
    plain = stats_from_legacy({k: v for k, v in legacy.items() if "so100" not in k}, list(FEATURES))
    torch.testing.assert_close(plain["observation.state"]["mean"], stats["observation.state"]["mean"])
    with pytest.raises(ConfigError, match="matches no feature"):
        stats_from_legacy({"normalize_inputs.buffer_observation_velocity.mean": torch.zeros(2)}, list(FEATURES))
