"""Fine-tuning through LoRA adapters (`--peft.*`): what trains, what is saved, how it loads, exact resume, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file

from smolvla.adapters import DEFAULT_TARGETS, AdapterSpec, add_adapter, load_adapter, save_adapted
from smolvla.errors import ConfigError
from smolvla.policy import SmolVLAPolicy
from smolvla.reflow.config import ReflowTrainConfig
from smolvla.train.config import TrainConfig
from tests.conftest import make_batch
from tests.train.test_trainer import dataset, flags, kill_after_first_checkpoint, run  # noqa: F401  (dataset: a fixture)

LORA = ["--peft.method_type=LORA", "--peft.r=4", "--policy.optimizer_lr=1e-3", "--val_freq=0"]


@pytest.fixture(scope="module")
def base(dataset, tmp_path_factory):  # noqa: F811
    return (
        run(dataset, tmp_path_factory.mktemp("base") / "run", "--steps=2", "--val_freq=0").checkpoint
        / "pretrained_model"
    )


def _adapted_state(directory):
    return load_file(str(directory / "adapter_model.safetensors"))


def test_lora_trains_only_the_adapters_in_lerobots_layout(dataset, base, tmp_path):  # noqa: F811
    result = run(dataset, tmp_path / "lora", f"--policy.path={base}", *LORA, "--steps=3")
    saved = result.checkpoint / "pretrained_model"
    assert not (saved / "model.safetensors").exists()
    config = json.loads((saved / "config.json").read_text())
    assert config["use_peft"] is True and config["pretrained_path"] == str(base)
    adapter_config = json.loads((saved / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4
    assert adapter_config["base_model_name_or_path"] == str(base)
    assert adapter_config["target_modules"] == DEFAULT_TARGETS
    adapter = _adapted_state(saved)
    # LeRobot's key layout (peft around the policy): base_model.model.<policy module path>.lora_A/B.weight
    assert all(k.startswith("base_model.model.model.") and ".lora_" in k for k in adapter)
    adapted = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in adapter}
    expert_layers = {k.split(".layers.")[1].split(".")[0] for k in adapted if ".lm_expert." in k}
    assert {k.rsplit(".", 1)[-1] for k in adapted if ".lm_expert." in k} == {"q_proj", "v_proj"} and expert_layers
    assert {k for k in adapted if ".lm_expert." not in k} == {
        f"model.{m}" for m in ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in",
                               "action_time_mlp_out")}  # fmt: skip
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())  # B starts at 0
    # Only the adapters trained: the base weights under the adapter are the checkpoint's, bit for bit.
    plain = SmolVLAPolicy.from_pretrained(base).state_dict()
    policy = SmolVLAPolicy.from_pretrained(base)
    load_adapter(policy, saved, trainable=False)
    for key, value in policy.state_dict().items():
        if ".lora_" not in key:
            assert torch.equal(value, plain[key.replace(".base_layer.", ".")]), key
    # The checkpoint loads as a policy (base + adapter merged) that samples like the adapted one.
    merged = SmolVLAPolicy.from_pretrained(saved).eval()
    batch = make_batch(merged)
    noise = torch.randn(2, merged.config.chunk_size, merged.config.max_action_dim)
    torch.testing.assert_close(
        merged.predict_chunk(batch, noise=noise), policy.eval().predict_chunk(batch, noise=noise), rtol=0, atol=1e-5
    )
    assert not any(".lora_" in k for k in merged.state_dict())


def test_adapter_round_trip_is_bit_identical_and_merge_writes_a_plain_policy(base, tmp_path):
    policy = SmolVLAPolicy.from_pretrained(base).eval()
    model = add_adapter(policy, AdapterSpec(r=4, lora_alpha=8), base=str(base))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = make_batch(policy)
    noise = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim)
    expected = policy.predict_chunk(batch, noise=noise)
    save_adapted(model, tmp_path / "adapter")
    reloaded = SmolVLAPolicy.from_pretrained(base)
    load_adapter(reloaded, tmp_path / "adapter", trainable=False)
    assert torch.equal(reloaded.eval().predict_chunk(batch, noise=noise), expected)
    save_adapted(model, tmp_path / "merged", merge=True)
    assert (tmp_path / "merged" / "adapter" / "adapter_model.safetensors").is_file()
    merged = SmolVLAPolicy.from_pretrained(tmp_path / "merged").eval()  # a plain checkpoint: model.safetensors
    assert (
        load_file(str(tmp_path / "merged" / "model.safetensors")).keys()
        == load_file(str(base / "model.safetensors")).keys()
    )
    torch.testing.assert_close(merged.predict_chunk(batch, noise=noise), expected, rtol=0, atol=1e-5)
    assert torch.equal(policy.predict_chunk(batch, noise=noise), expected)  # merging a copy left the original


def test_sigkill_resume_with_lora_augmentation_and_ema_is_bit_identical(dataset, base, tmp_path):  # noqa: F811
    extra = [f"--policy.path={base}", *LORA, "--steps=12", "--save_freq=3", "--ema_decay=0.9", "--peft.merge=true",
             "--dataset.image_transforms.enable=true", "--num_workers=1"]  # fmt: skip
    reference = run(dataset, tmp_path / "ref", *extra)
    killed_dir = tmp_path / "killed"
    assert kill_after_first_checkpoint(dataset, killed_dir, extra) < 12
    resumed = run(dataset, killed_dir, *extra, "--resume=true")
    for part in ("pretrained_model/adapter/adapter_model.safetensors", "pretrained_model/model.safetensors",
                 "training_state/raw_model.safetensors"):  # fmt: skip
        a, b = load_file(str(reference.checkpoint / part)), load_file(str(resumed.checkpoint / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_bad_adapter_settings(dataset, base, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match=r"target_modules.*nothing_like_this"):
        run(dataset, tmp_path / "a", f"--policy.path={base}", *LORA, "--peft.target_modules=nothing_like_this")
    with pytest.raises(ConfigError, match=r"--peft\.\* adapts a trained policy"):
        run(dataset, tmp_path / "b", *LORA)
    with pytest.raises(ConfigError, match=r"--peft\.r must be >= 1, got 0"):
        run(dataset, tmp_path / "c", f"--policy.path={base}", "--peft.r=0")
    with pytest.raises(ConfigError, match=r"full_training_modules.*no_such_module"):
        run(dataset, tmp_path / "d", f"--policy.path={base}", *LORA, "--peft.full_training_modules=no_such_module")
    with pytest.raises(ConfigError, match=r"--peft\.\* is not supported with reflow"):
        ReflowTrainConfig.from_flags(
            flags(dataset, tmp_path / "e", "--policy.use_reflow=true", f"--policy.teacher_path={base}", *LORA)
        )
    assert not (tmp_path / "e").exists()
    assert TrainConfig.from_flags(flags(dataset, tmp_path / "f")).peft.enabled is False
