"""Evaluation during training: metrics at the right steps, `checkpoints/best` by success (ties: validation loss),
never pruned, kept across a resume, and no effect on the run itself."""

import json

import pytest
import torch
from safetensors.torch import load_file

from smolvla.errors import ConfigError
from smolvla.train.config import TrainConfig
from smolvla.train.selection import BestCheckpoint
from smolvla.train.trainer import train
from tests.train.test_trainer import dataset, flags, run, weights  # noqa: F401  (dataset: the module's fixture)


class ScriptedEvaluator:
    """Success by step; reseeds torch as real rollouts do (the run must not notice)."""

    def __init__(self, success: dict[int, float]):
        self.success, self.calls, self.checked = success, [], False

    def check(self, policy) -> None:
        self.checked = True

    def __call__(self, pretrained_model, step):
        assert (pretrained_model / "config.json").is_file()  # the checkpoint of that step exists when evaluated
        self.calls.append(step)
        torch.manual_seed(step)
        torch.rand(100)
        return {"eval/success": self.success[step], "eval/mean_length": 10.0}


def run_with(dataset, out, evaluator, *extra):  # noqa: F811
    return train(TrainConfig.from_flags(flags(dataset, out, "--env.task=reach", *extra)), evaluator=evaluator)


def test_eval_steps_best_link_and_pruning(dataset, tmp_path):  # noqa: F811
    evaluator = ScriptedEvaluator({2: 0.5, 4: 1.0, 6: 0.5})
    result = run_with(dataset, tmp_path / "run", evaluator, "--eval_freq=2", "--keep_last=1", "--save_freq=100")
    assert evaluator.checked and evaluator.calls == [2, 4, 6]
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/success" in r] == [2, 4, 6]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "best").resolve() == checkpoints / "000004"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["000004", "000006"]  # best kept
    assert result.best.step == 4 and result.best.success == 1.0
    # Evaluating changed nothing in the run: same weights as without it.
    plain = run(dataset, tmp_path / "plain", "--env.task=reach", "--save_freq=100")
    a, b = weights(plain.checkpoint), weights(result.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ties_go_to_the_lower_validation_loss_and_resume_keeps_the_choice(dataset, tmp_path):  # noqa: F811
    evaluator = ScriptedEvaluator({2: 1.0, 4: 1.0, 6: 0.0})
    run_with(dataset, tmp_path / "run", evaluator, "--eval_freq=2", "--steps=4")
    checkpoints = tmp_path / "run" / "checkpoints"
    best = BestCheckpoint.load(checkpoints)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
    assert set(val) >= {2, 4}  # validation runs at every evaluation step (val_freq=3 alone would miss 2 and 4)
    assert best.step == min((2, 4), key=lambda s: val[s]) and best.evaluated == [2, 4]
    resumed = run_with(dataset, tmp_path / "run", evaluator, "--eval_freq=2", "--steps=6", "--resume=true")
    assert evaluator.calls == [2, 4, 6]  # nothing evaluated twice
    assert resumed.best.step == best.step and BestCheckpoint.load(checkpoints).evaluated == [2, 4, 6]
    assert (checkpoints / "best").resolve().name == f"{best.step:06d}"
    assert load_file(str(checkpoints / "best" / "pretrained_model" / "model.safetensors"))


def test_eval_settings_are_checked(dataset, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="--eval_freq needs the tasks to evaluate on"):
        TrainConfig.from_flags(flags(dataset, tmp_path, "--eval_freq=2"))
    with pytest.raises(ConfigError, match="--eval_freq must be >= 0"):
        TrainConfig.from_flags(flags(dataset, tmp_path, "--eval_freq=-1"))
    with pytest.raises(ConfigError, match=r"--eval\.n_episodes and --eval\.num_workers must be >= 1"):
        TrainConfig.from_flags(flags(dataset, tmp_path, "--eval.n_episodes=0"))
    with pytest.raises(ConfigError, match="needs a simulator"):
        train(TrainConfig.from_flags(flags(dataset, tmp_path, "--eval_freq=2", "--env.task=reach")))
