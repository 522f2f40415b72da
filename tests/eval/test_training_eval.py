"""`smolvla train --eval_freq`: Meta-World success of the run's own checkpoints, end to end through the CLI."""

import json

import pytest

from smolvla.cli import main
from smolvla.sim.collect import CollectConfig, collect
from smolvla.sim.metaworld_env import MetaWorldConfig
from tests.data.builders import make_episodes, write_v30


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    env = MetaWorldConfig(task="reach", cameras=("corner2",), image_size=32, max_steps=60)
    config = CollectConfig(env=env, episodes_per_task=3, output_dir=str(tmp_path_factory.mktemp("ev") / "demos"))
    return collect(config, progress=False)


def train_flags(demos, out, *extra):
    return [
        "train", f"--dataset.root={demos}", f"--output_dir={out}", "--batch_size=4", "--steps=4", "--num_workers=0",
        "--progress=false", "--policy.chunk_size=5", "--policy.n_action_steps=5", "--val_freq=0", *extra,
    ]  # fmt: skip


def test_train_evaluates_its_checkpoints_on_the_simulator(demos, tmp_path, capsys):
    flags = ["--eval_freq=2", "--env.task=reach", "--eval.n_episodes=2", "--env.max_steps=15"]
    assert main(train_flags(demos, tmp_path / "run", *flags)) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/success" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0.0 <= r["eval/success"] <= 1.0 and r["eval/mean_length"] <= 15 for r in evals)
    assert all("eval_task/reach" in r for r in evals)
    best = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())
    assert best["evaluated"] == [2, 4] and (tmp_path / "run" / "checkpoints" / "best").is_symlink()
    assert "best checkpoint: step" in capsys.readouterr().out


def test_an_eval_task_without_the_policys_cameras_is_one_error_before_training(demos, tmp_path, capsys):
    rename = '--rename_map={"observation.images.corner2": "observation.images.top"}'
    flags = ["--eval_freq=4", "--env.task=reach", "--eval.n_episodes=1", "--env.max_steps=5", rename]
    assert main(train_flags(demos, tmp_path / "renamed", *flags)) == 0  # renamed back to corner2 for the simulator
    capsys.readouterr()
    other = write_v30(tmp_path / "top_wrist", make_episodes())  # cameras `top` and `wrist`: not Meta-World's
    assert main(train_flags(other, tmp_path / "run", "--eval_freq=2", "--env.task=reach")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the policy reads cameras ['top', 'wrist']" in err[0] and "unknown camera" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert main(train_flags(demos, tmp_path / "task", "--eval_freq=2", "--env.task=not-a-task")) == 2
    assert "not-a-task" in capsys.readouterr().err
