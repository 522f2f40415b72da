"""Hub ids wherever a path is accepted, from a Hugging Face cache fabricated on disk, offline (never the network)."""

import json
import shutil

import pytest
import torch

from smolvla import CheckpointError, ConfigError, SmolVLAPolicy
from smolvla.cli import main
from smolvla.processors import load_processors
from smolvla.train.config import TrainConfig
from smolvla.train.trainer import train
from tests.data.builders import EPISODES, make_episodes, write_v30
from tests.hub_cache import cache_repo

COMMON = ["--batch_size=2", "--num_workers=0", "--progress=false", "--val_freq=0", "--log_freq=1",
          "--policy.chunk_size=3", "--policy.n_action_steps=3"]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_v30(tmp_path_factory.mktemp("hub") / "ds", make_episodes(), [t for _, t in EPISODES])


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "run"
    flags = [f"--dataset.root={dataset}", f"--output_dir={out}", "--steps=2", *COMMON]
    return train(TrainConfig.from_flags(flags)).checkpoint / "pretrained_model"


def same_weights(a: SmolVLAPolicy, b: SmolVLAPolicy) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_policy_and_processors_load_from_a_hub_id(hf_cache, trained):
    cache_repo(hf_cache, "lerobot/tiny_test", trained)
    policy = SmolVLAPolicy.from_pretrained("lerobot/tiny_test")
    assert same_weights(policy, SmolVLAPolicy.from_pretrained(trained))
    pre, _ = load_processors("lerobot/tiny_test")
    reference, _ = load_processors(trained)
    raw = {"observation.state": torch.zeros(4), "task": "pick up the cube"}
    assert torch.equal(pre(raw)["observation.language.tokens"], reference(raw)["observation.language.tokens"])


def test_a_revision_is_pinned_with_at(hf_cache, trained):
    cache_repo(hf_cache, "lerobot/tiny_test", trained, ref="v1")
    assert same_weights(SmolVLAPolicy.from_pretrained("lerobot/tiny_test@v1"), SmolVLAPolicy.from_pretrained(trained))
    with pytest.raises(CheckpointError, match=r"'lerobot/tiny_test@v2' is not a local directory and not in the"):
        SmolVLAPolicy.from_pretrained("lerobot/tiny_test@v2")


def test_an_unknown_id_offline_is_one_error_naming_it_and_the_cache(hf_cache, capsys):
    with pytest.raises(CheckpointError, match=rf"model 'lerobot/nothing' .* cache {hf_cache} \(HF_HUB_OFFLINE=1"):
        SmolVLAPolicy.from_pretrained("lerobot/nothing")
    assert main(["serve", "--policy_path=lerobot/nothing", "--port=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lerobot/nothing" in err[0] and str(hf_cache) in err[0]


def test_a_corrupt_cache_entry_is_named(hf_cache, trained):
    snapshot = cache_repo(hf_cache, "lerobot/tiny_test", trained)
    (snapshot / "model.safetensors").resolve().unlink()  # the blob is gone, the snapshot's link dangles
    with pytest.raises(CheckpointError, match=r"cache entry .* is corrupt: \['model\.safetensors'\]"):
        SmolVLAPolicy.from_pretrained("lerobot/tiny_test")


def test_a_local_directory_wins_over_the_cache(hf_cache, trained, tmp_path, monkeypatch):
    snapshot = cache_repo(hf_cache, "me/policy", trained)
    (snapshot / "model.safetensors").resolve().unlink()  # the cached copy would fail
    shutil.copytree(trained, tmp_path / "me" / "policy")
    monkeypatch.chdir(tmp_path)
    assert same_weights(SmolVLAPolicy.from_pretrained("me/policy"), SmolVLAPolicy.from_pretrained(trained))


def test_fine_tune_a_hub_policy_on_a_hub_dataset(hf_cache, trained, dataset, tmp_path):
    cache_repo(hf_cache, "lerobot/tiny_test", trained)
    snapshot = cache_repo(hf_cache, "me/so101_data", dataset, repo_type="dataset")
    flags = ["--dataset.repo_id=me/so101_data", "--policy.path=lerobot/tiny_test", f"--output_dir={tmp_path / 'ft'}",
             "--steps=1", *COMMON[:-2]]  # fmt: skip
    config = TrainConfig.from_flags(flags)
    assert config.dataset.root == (str(snapshot),)
    assert train(config).step == 1
    with pytest.raises(ConfigError, match=r"dataset 'me/missing' is not a local directory"):
        TrainConfig.from_flags(["--dataset.repo_id=me/missing", f"--output_dir={tmp_path / 'x'}"])


def test_a_tokenizer_named_by_hub_id(hf_cache, trained, tmp_path):
    """lerobot-train names the backbone's tokenizer by hub id in policy_preprocessor.json, without copying it."""
    checkpoint = shutil.copytree(trained, tmp_path / "ckpt")
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.move(checkpoint / name, tokenizer / name)
    cache_repo(hf_cache, "HuggingFaceTB/some-tokenizer", tokenizer)
    spec = json.loads((checkpoint / "policy_preprocessor.json").read_text())
    for step in spec["steps"]:
        if step["registry_name"] == "tokenizer_processor":
            step["config"]["tokenizer_name"] = "HuggingFaceTB/some-tokenizer"
    (checkpoint / "policy_preprocessor.json").write_text(json.dumps(spec))
    pre, _ = load_processors(checkpoint)
    reference, _ = load_processors(trained)
    raw = {"observation.state": torch.zeros(4), "task": "open the drawer"}
    assert torch.equal(pre(raw)["observation.language.tokens"], reference(raw)["observation.language.tokens"])
    spec["steps"][[s["registry_name"] for s in spec["steps"]].index("tokenizer_processor")]["config"][
        "tokenizer_name"
    ] = "HuggingFaceTB/not-cached"
    (checkpoint / "policy_preprocessor.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match=r"tokenizer 'HuggingFaceTB/not-cached' not found.*not in the Hugging"):
        load_processors(checkpoint)
