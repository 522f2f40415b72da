"""`smolvla demo --quick`: the main job's whole loop (collect → train → evaluate → report) in reduced form."""

import json

import pytest

from smolvla.cli import main
from smolvla.demo import DemoConfig
from smolvla.errors import ConfigError


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", f"--output_dir={out}", "--num_workers=1"]) == 0
    printed = capsys.readouterr().out
    assert "drawer-close" in printed and "Push the drawer closed." in printed  # the table: task and instruction
    info = json.loads((out / "eval" / "eval_info.json").read_text())
    assert info["per_task"]["drawer-close"]["episodes"] == 2
    assert info["per_task"]["drawer-close"]["chunk_ms_mean"] > 0
    videos = sorted((out / "eval" / "videos").glob("*.mp4"))
    assert videos and str(videos[0]) in printed
    assert (out / "loss.png").stat().st_size > 0 and str(out / "loss.png") in printed
    assert any((out / "train" / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "train" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()
    # Success during training chose the checkpoint the table evaluates.
    best = json.loads((out / "train" / "checkpoints" / "best.json").read_text())
    assert best["evaluated"] == [14, 28, 40] and f"best checkpoint during training: step {best['step']}" in printed
    assert info["config"]["policy"]["path"] == str(
        (out / "train" / "checkpoints" / "best").resolve() / "pretrained_model"
    )
    # A rerun reuses the dataset and the finished training run, and evaluates again.
    assert main(["demo", "--quick", f"--output_dir={out}", "--num_workers=1"]) == 0
    assert "dataset exists, reusing" in capsys.readouterr().out


def test_sizes_fill_only_unset_fields():
    config = DemoConfig(quick=True, steps=7).resolved()
    assert config.size == "quick" and config.steps == 7 and config.episodes_per_task == 4
    assert config.output_dir == "outputs/demo-quick"  # never collides with the default run's dataset
    assert DemoConfig().resolved().tasks.count(",") >= 1
    full = DemoConfig(size="full").resolved()
    assert (full.tasks, full.image_size, DemoConfig(size="full", image_size=96).resolved().image_size) == (
        "mt10",
        128,
        96,
    )
    with pytest.raises(ConfigError, match="--size"):
        DemoConfig(size="huge").resolved()
