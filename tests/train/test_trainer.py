"""The trainer: exact resume after SIGKILL, multi-process equivalence, checkpoints, freezing, EMA, bad input."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

import smolvla.model.checkpoint
from smolvla.cli import main
from smolvla.data import DatasetError
from smolvla.errors import CheckpointError, ConfigError
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import TaskTokenizer, load_processors
from smolvla.train.config import TrainConfig
from smolvla.train.optim import Schedule, lr_factor
from smolvla.train.trainer import train
from tests.data.builders import CAMERAS, EPISODES, FEATURES, make_episodes, write_v30

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    episodes = EPISODES * 2
    return write_v30(
        tmp_path_factory.mktemp("train") / "ds", make_episodes(episodes=episodes), [t for _, t in episodes]
    )


def flags(dataset, out, *extra):
    return [
        f"--dataset.root={dataset}", f"--output_dir={out}", "--batch_size=4", "--steps=6", "--log_freq=2",
        "--save_freq=3", "--val_freq=3", "--val_batches=1", "--num_workers=0", "--progress=false",
        "--policy.chunk_size=5", "--policy.n_action_steps=5", *extra,
    ]  # fmt: skip


def run(dataset, out, *extra):
    return train(TrainConfig.from_flags(flags(dataset, out, *extra)))


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "pretrained_model" / "model.safetensors"))


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "smolvla.cli", *args], env=ENV, cwd=REPO, **kwargs)


def kill_after_first_checkpoint(dataset, out: Path, extra: list[str]) -> int:
    """Start `smolvla train` in a process, SIGKILL it just after its first checkpoint (mid-step or mid-save);
    returns the step `checkpoints/last` was left at."""
    proc = cli("train", *flags(dataset, out, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err.decode()[-2000:]}"
    return int(last.resolve().name)


def test_resume_after_sigkill_is_bit_identical(dataset, tmp_path):
    extra = ["--steps=24", "--save_freq=4", "--grad_accum_steps=2", "--ema_decay=0.9", "--keep_last=2"]
    reference = run(dataset, tmp_path / "ref", *extra)
    killed_dir = tmp_path / "killed"
    assert kill_after_first_checkpoint(dataset, killed_dir, extra) < 24
    resumed = run(dataset, killed_dir, *extra, "--resume=true")
    assert resumed.step == reference.step == 24
    a, b = weights(reference.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    raw = "training_state/raw_model.safetensors"
    ra, rb = load_file(str(reference.checkpoint / raw)), load_file(str(resumed.checkpoint / raw))
    assert all(torch.equal(ra[k], rb[k]) for k in ra)
    # The log has each step once: what the killed run logged after its checkpoint was dropped on resume.
    steps = [json.loads(line)["step"] for line in resumed.metrics.read_text().splitlines() if "train/loss" in line]
    assert steps == sorted(set(steps)) and steps[-1] == 24
    kept = sorted(p.name for p in (killed_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == ["000020", "000024"]  # keep_last=2


def test_two_processes_match_one(dataset, tmp_path):
    extra = ["--steps=3", "--save_freq=3", "--val_freq=0"]
    single = run(dataset, tmp_path / "one", *extra)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
              "-m", "smolvla.cli", "train", *flags(dataset, tmp_path / "two", *extra)]  # fmt: skip
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launch, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two" / "checkpoints" / "000003"
    assert json.loads((two / "training_state" / "training_step.json").read_text())["processes"] == 2
    a, b = weights(single.checkpoint), weights(two)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    logged = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    single_log = [json.loads(line) for line in single.metrics.read_text().splitlines()]
    assert logged[-1]["train/loss"] == pytest.approx(single_log[-1]["train/loss"], rel=1e-4)


def test_checkpoint_round_trip_and_layout(dataset, tmp_path):
    result = run(dataset, tmp_path / "run", "--keep_last=1")
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["000006", "last"]
    assert (root / "last").is_symlink() and (root / "last").resolve() == result.checkpoint
    pretrained = result.checkpoint / "pretrained_model"
    for name in ("config.json", "model.safetensors", "train_config.json", "tokenizer.json",
                 "policy_preprocessor.json", "policy_postprocessor.json"):  # fmt: skip
        assert (pretrained / name).is_file(), name
    config = json.loads((pretrained / "config.json").read_text())
    assert config["type"] == "smolvla" and config["chunk_size"] == 5
    # The tiny backbone is no hub repository: the checkpoint carries it in vlm/ with the learnt tokenizer, which
    # declares SmolVLM's image tokens (LeRobot reads their ids): what LeRobot loads, given vlm_model_name=<dir>/vlm.
    assert config["vlm_model_name"] == "vlm" and (pretrained / "vlm" / "config.json").is_file()
    tokenizer_config = json.loads((pretrained / "vlm" / "tokenizer_config.json").read_text())
    assert tokenizer_config["fake_image_token"] == "<fake_token_around_image>"
    vlm_tokenizer = TaskTokenizer.from_directory(pretrained / "vlm")
    assert vlm_tokenizer.tokenizer.token_to_id("<global-img>") is not None
    learnt = TaskTokenizer.from_directory(pretrained)
    assert vlm_tokenizer.encode(["open the drawer"], 16)[0].equal(learnt.encode(["open the drawer"], 16)[0])
    assert json.loads((pretrained / "train_config.json").read_text())["dataset"]["root"] == [str(dataset)]
    assert json.loads((result.checkpoint / "training_state" / "training_step.json").read_text())["step"] == 6
    policy = SmolVLAPolicy.from_pretrained(pretrained)
    pre, post = load_processors(pretrained)
    obs = {"observation.state": torch.randn(4), "task": "open the drawer"}
    obs.update({k: torch.rand(3, h, w) for k, (h, w) in CAMERAS.items()})
    noise = torch.randn(1, 5, policy.config.max_action_dim)
    action = post({"action": policy.predict_chunk(pre(obs), noise=noise)})["action"]
    assert action.shape == (1, 5, 3) and torch.isfinite(action).all()
    # The run's metrics: scheduled lr at the logged steps, and a validation loss on held-out episodes.
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    schedule = Schedule.for_run(policy.config, 6)
    for row in (r for r in rows if "train/lr" in r):
        assert row["train/lr"] == pytest.approx(policy.config.optimizer_lr * lr_factor(row["step"], schedule))
    assert any("val/loss" in r for r in rows) and result.val_loss is not None
    assert any(k.startswith("loss_task/") for k in rows[0])
    assert any(result.tensorboard.glob("events.out.tfevents.*"))


def test_frozen_parameters_do_not_change(dataset, tmp_path):
    result = run(dataset, tmp_path / "run", "--policy.train_state_proj=false", "--steps=3", "--val_freq=0")
    assert result.train_loss is not None
    trained = weights(result.checkpoint)
    torch.manual_seed(1000)  # the trainer seeds before building the policy: same initial weights
    initial = SmolVLAPolicy.from_pretrained(result.checkpoint / "pretrained_model")
    fresh = SmolVLAPolicy.from_preset("tiny", **{k: getattr(initial.config, k) for k in ("input_features",
                                      "output_features", "chunk_size", "n_action_steps")})  # fmt: skip
    start = fresh.state_dict()
    frozen = [k for k in start if k.startswith("model.vlm_with_expert.vlm.") or k.startswith("model.state_proj.")]
    expert = [k for k in start if ".lm_expert." in k]
    assert frozen and expert
    assert all(torch.equal(trained[k], start[k]) for k in frozen), "a frozen parameter changed"
    assert any(not torch.equal(trained[k], start[k]) for k in expert), "the action expert did not train"


def test_multi_dataset_yaml_config_and_bf16(dataset, tmp_path):
    other = write_v30(tmp_path / "ds2", make_episodes(seed=1))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"dataset:\n  root: [{dataset}, {other}]\n  weights: [3, 1]\nbatch_size: 2\npolicy:\n  use_amp: true\n"
    )
    both = f"{dataset},{other}"  # the flag repeats the file's list: flags are applied after the file
    result = run(both, tmp_path / "run", f"--config_path={config}", "--steps=2", "--val_freq=0")
    saved = json.loads((result.checkpoint / "pretrained_model" / "train_config.json").read_text())
    assert saved["dataset"]["weights"] == [3.0, 1.0] and saved["policy"]["use_amp"] is True
    assert saved["batch_size"] == 4  # the flag given after --config_path wins over the file
    row = json.loads(result.metrics.read_text().splitlines()[-1])
    assert {"loss_dataset/0_ds", "loss_dataset/1_ds2"} <= set(row) and torch.isfinite(torch.tensor(row["train/loss"]))


def test_fine_tune_from_a_checkpoint(dataset, tmp_path):
    base = run(dataset, tmp_path / "base", "--steps=2", "--val_freq=0")
    tuned = run(dataset, tmp_path / "tuned", f"--policy.path={base.checkpoint}", "--steps=2", "--val_freq=0",
                "--policy.num_steps=3")  # fmt: skip
    config = json.loads((tuned.checkpoint / "pretrained_model" / "config.json").read_text())
    assert config["num_steps"] == 3 and config["chunk_size"] == 5
    with pytest.raises(ConfigError, match="architecture"):
        run(dataset, tmp_path / "bad", f"--policy.path={base.checkpoint}", "--policy.image_size=32")


def test_bad_input_errors(dataset, tmp_path):
    run(dataset, tmp_path / "run", "--steps=3")
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run(dataset, tmp_path / "run")
    with pytest.raises(ConfigError, match="batch_size: checkpoint 4, now 8"):
        run(dataset, tmp_path / "run", "--resume=true", "--batch_size=8")
    with pytest.raises(CheckpointError, match="no checkpoints/last"):
        run(dataset, tmp_path / "fresh", "--resume=true")
    state = tmp_path / "run" / "checkpoints" / "last" / "training_state" / "optimizer_state.pt"
    state.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"optimizer_state\.pt|training state"):
        run(dataset, tmp_path / "run", "--resume=true", "--steps=6")
    # A dataset without the policy's cameras: fine-tune a checkpoint on a dataset with only one of them.
    one_cam = {k: v for k, v in FEATURES.items() if k != "observation.images.wrist"}
    top_only = [{k: v for k, v in ep.items() if k != "observation.images.wrist"} for ep in make_episodes()]
    narrow = write_v30(tmp_path / "top_only", top_only, features=one_cam)
    checkpoint = tmp_path / "run" / "checkpoints" / "000003"
    with pytest.raises(DatasetError, match=r"lacks the policy's cameras.*observation\.images\.wrist"):
        run(narrow, tmp_path / "ft", f"--policy.path={checkpoint}")
    # An empty dataset (every episode removed from its metadata).
    empty = write_v30(tmp_path / "empty", make_episodes())
    episodes = empty / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(episodes).slice(0, 0), episodes)
    with pytest.raises(DatasetError, match=r"info\.json counts 3 episodes but .* lists 0"):
        run(empty, tmp_path / "z")
    with pytest.raises(DatasetError, match="no frames to train on"):
        run(empty, tmp_path / "z", "--dataset.verify=false")
    with pytest.raises(ConfigError, match="no dataset"):
        train(TrainConfig.from_flags([f"--output_dir={tmp_path / 'x'}"]))
    with pytest.raises(DatasetError):
        run(tmp_path / "does-not-exist", tmp_path / "y")


def test_a_save_killed_before_the_first_checkpoint_does_not_block_a_fresh_start(dataset, tmp_path):
    partial = tmp_path / "run" / "checkpoints" / ".000003.tmp-x1y2"
    (partial / "pretrained_model").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoints/last"):
        run(dataset, tmp_path / "run", "--resume=true")
    result = run(dataset, tmp_path / "run", "--steps=3", "--val_freq=0")
    assert result.step == 3 and not partial.exists()


def test_resume_from_another_working_directory(dataset, tmp_path, monkeypatch):
    """Paths are stored absolute: a relative --dataset.root works from anywhere, and the same dataset given by its
    absolute path is the same setting."""
    common = ["--batch_size=4", "--log_freq=2", "--save_freq=3", "--val_freq=0", "--num_workers=0",
              "--progress=false", "--policy.chunk_size=5", "--policy.n_action_steps=5"]  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    relative = os.path.relpath(dataset, tmp_path / "a")
    train(TrainConfig.from_flags([f"--dataset.root={relative}", "--output_dir=run", "--steps=3", *common]))
    saved = json.loads((tmp_path / "a/run/checkpoints/last/pretrained_model/train_config.json").read_text())
    assert saved["dataset"]["root"] == [str(dataset)]
    monkeypatch.chdir(tmp_path / "b")
    resumed = train(TrainConfig.from_flags(["--output_dir=../a/run", "--resume=true", "--steps=6"]))
    assert resumed.step == 6
    again = train(TrainConfig.from_flags([f"--dataset.root={dataset}", "--output_dir=../a/run", "--resume=true",
                                          "--steps=9"]))  # fmt: skip
    assert again.step == 9


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--dataset.val_fraction=1.5", "--dataset.val_fraction must be in [0, 1), got 1.5"),
     ("--dataset.weights=-1", "--dataset.weights must be finite, >= 0 and not all 0, got [-1.0]"),
     ("--policy.optimizer_lr=-1", "need optimizer_lr > 0"),
     ("--policy.scheduler_warmup_steps=-5", "scheduler_warmup_steps, scheduler_decay_steps and scheduler_decay_lr")],
)  # fmt: skip
def test_out_of_range_settings_are_one_line(dataset, tmp_path, capsys, flag, message):
    assert main(["train", f"--dataset.root={dataset}", f"--output_dir={tmp_path}", "--progress=false", flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smolvla train: error: ") and message in err[0]
    assert not (tmp_path / "tensorboard").exists()


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(dataset, tmp_path, monkeypatch):
    real_save, calls = smolvla.model.checkpoint.save_file, []

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the second checkpoint's weights hit a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(smolvla.model.checkpoint, "save_file", save_file)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint 000006 .*No space left on device; .*last "
                                              r"still points to the last complete checkpoint"):  # fmt: skip
        run(dataset, tmp_path / "run", "--val_freq=0")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["000003", "last"]  # nothing half-written
    assert SmolVLAPolicy.from_pretrained(checkpoints / "last").config.chunk_size == 5
