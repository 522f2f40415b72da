"""Continual training: stage plans, replay proportions, per-stage lr, resume, results, and bad configs."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from smolvla.continual.config import ContinualConfig
from smolvla.continual.metrics import LEARNT
from smolvla.continual.plan import stages, task_metas, write_shared
from smolvla.continual.runner import run_continual
from smolvla.data import DatasetError, apportion
from smolvla.errors import ConfigError
from smolvla.train.data import load_train_data
from smolvla.train.trainer import Trainer
from tests.data.builders import FEATURES, make_episodes, write_v30

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
TASKS = {"t1": "pick up the cube", "t2": "open the drawer", "t3": "push the button"}
BASE_LR, FINAL_RATIO = 1e-3, 0.05


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("continual")
    out = {}
    for i, (task_id, text) in enumerate(TASKS.items()):
        out[task_id] = write_v30(base / task_id, make_episodes(seed=i, episodes=[(10, text)] * 6), [text] * 6)
    return out


def settings(roots, output_dir, **top) -> dict:
    """A 3-stage config as a YAML file would give it."""
    values = {
        "output_dir": str(output_dir),
        "base_lr": BASE_LR,
        "final_lr_ratio": FINAL_RATIO,
        "train": {
            "batch_size": 4, "num_workers": 0, "log_freq": 2, "save_freq": 2, "progress": False,
            "policy": {"chunk_size": 5, "n_action_steps": 5},
        },
        "eval": {"episodes": 0, "val_batches": 2},
        "tasks": [{"id": task_id, "root": str(root)} for task_id, root in roots.items()],
        "stages": [
            {"task": "t1", "steps": 6},
            {"task": "t2", "steps": 6, "lr_factor": 0.7, "replay": {"t1": 0.25}},
            {"task": "t3", "steps": 6, "lr_factor": 0.5, "replay": {"t1": 0.1, "t2": 0.2, "t3": 0.7}},
        ],
    }  # fmt: skip
    values.update(top)
    return values


def config_of(values: dict) -> ContinualConfig:
    config = ContinualConfig.from_mapping(copy.deepcopy(values))
    config.validate()
    return config


@pytest.fixture(scope="module")
def finished(roots, tmp_path_factory):
    """One uninterrupted replay run."""
    values = settings(roots, tmp_path_factory.mktemp("runs") / "ref")
    return values, run_continual(config_of(values))


def stage_weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "stages" / stage / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"))


def test_stage_plan_applies_lr_factors_replay_and_baselines(roots, tmp_path):
    values = settings(roots, tmp_path)
    plan = stages(config_of(values))
    assert [s.name for s in plan] == ["01_t1", "02_t2", "03_t3"]
    assert [s.train.policy.optimizer_lr for s in plan] == pytest.approx([1e-3, 7e-4, 5e-4])
    assert [s.train.policy.scheduler_decay_lr for s in plan] == pytest.approx([5e-5, 3.5e-5, 2.5e-5])
    # the stage's own task first; replay weights normalized; each stage starts from the previous final checkpoint
    assert plan[1].train.dataset.root == (str(roots["t2"]), str(roots["t1"]))
    assert plan[1].train.dataset.weights == pytest.approx((0.75, 0.25))
    assert plan[2].train.dataset.weights == pytest.approx((0.7, 0.1, 0.2))
    assert plan[0].train.policy.path is None and plan[0].train.policy.tokenizer.endswith("tokenizer")
    assert plan[1].train.policy.path == str(plan[0].final_checkpoint)
    assert plan[2].seen == ["t1", "t2", "t3"]
    stats = {s.train.dataset.stats_path for s in plan}
    assert len(stats) == 1  # one normalization for every stage

    sequential = stages(config_of({**values, "method": "sequential"}))
    assert [s.train.dataset.root for s in sequential] == [(str(roots[t]),) for t in TASKS]
    (multitask,) = stages(config_of({**values, "method": "multitask"}))
    assert multitask.train.dataset.root == tuple(str(r) for r in roots.values())
    assert multitask.train.steps == 18 and multitask.train.policy.optimizer_lr == BASE_LR

    budget_config = config_of({**values, "replay": {"strategy": "budget", "budget": 0.2}})
    write_shared(budget_config, task_metas(budget_config))
    budget = stages(budget_config)
    assert budget[2].train.dataset.episode_fraction == (1.0, 0.2, 0.2)
    data = load_train_data(budget[2].train.dataset, chunk_size=5, seed=0)
    full = load_train_data(plan[2].train.dataset, chunk_size=5, seed=0)
    assert len(full.train.datasets[1].episodes) == 5  # 6 episodes, 1 held out
    kept = data.train.datasets[1].episodes
    assert len(kept) == 1 and set(kept) <= set(full.train.datasets[1].episodes)
    assert load_train_data(budget[2].train.dataset, chunk_size=5, seed=0).train.datasets[1].episodes == kept


def test_run_results_lr_per_stage_and_replay_proportions(finished):
    values, results = finished
    run = Path(values["output_dir"]) / "replay"
    assert results["tasks"] == ["t1", "t2", "t3"]
    loss = results["loss_matrix"]
    assert [[v is None for v in row] for row in loss] == [[False, True, True], [False, False, True], [False] * 3]
    assert all(v > 0 for row in loss for v in row if v is not None)
    assert [r["status"][r["task"]] for r in results["stages"]] == [LEARNT] * 3
    # t1's status after stage 3 is its loss ratio to the loss right after it was learnt, against the default
    # thresholds (1.1 and 1.5).
    ratio = loss[2][0] / loss[0][0]
    expected = "retained" if ratio <= 1.1 else "slight degradation" if ratio <= 1.5 else "significant forgetting"
    assert results["stages"][2]["status"]["t1"] == expected
    assert results["metrics"] is None  # nothing simulated: no success matrix
    assert json.loads((run / "results.json").read_text())["loss_matrix"] == loss
    assert (run / "success_matrix.png").stat().st_size > 0
    assert any((run / "tensorboard").iterdir())

    for stage, factor in (("01_t1", 1.0), ("02_t2", 0.7), ("03_t3", 0.5)):
        logged = [json.loads(line) for line in (run / "stages" / stage / "metrics.jsonl").read_text().splitlines()]
        lrs = [r["train/lr"] for r in logged if "train/lr" in r]
        assert max(lrs) <= BASE_LR * factor * (1 + 1e-6)
        assert lrs[-1] == pytest.approx(BASE_LR * factor * FINAL_RATIO)  # each stage's cosine ends at its own floor

    # The batches of stage 3 hold each task in the configured share: exactly so over one epoch.
    plan = stages(config_of(values))
    plan[2].train.resume = True
    trainer = Trainer(plan[2].train)
    sizes = trainer.data.train.sizes
    epoch = sum(sizes)
    batches = trainer._loader(0, -(-epoch // 4)).batch_sampler
    drawn = np.concatenate([np.asarray(b) for b in batches])[:epoch]
    per_dataset = np.bincount(np.searchsorted(np.cumsum(sizes), drawn, side="right"), minlength=3)
    assert per_dataset.tolist() == apportion(epoch, [0.7, 0.1, 0.2])


def test_resume_after_sigkill_mid_stage_matches_the_uninterrupted_run(finished, tmp_path):
    values, _ = finished
    killed = {**copy.deepcopy(values), "output_dir": str(tmp_path)}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(killed))
    command = [sys.executable, "-m", "smolvla.cli", "continual", f"--config_path={path}"]
    proc = subprocess.Popen(command, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "replay" / "stages" / "02_t2" / "checkpoints" / "last"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err.decode()[-2000:]}"
    assert not (tmp_path / "replay" / "stages" / "03_t3" / "stage_result.json").exists()
    stage1 = tmp_path / "replay" / "stages" / "01_t1" / "stage_result.json"
    before = stage1.stat().st_mtime_ns

    resumed = run_continual(config_of(killed))
    assert stage1.stat().st_mtime_ns == before  # the finished stage was not redone
    reference = Path(values["output_dir"]) / "replay"
    for stage in ("01_t1", "02_t2", "03_t3"):
        a, b = stage_weights(reference, stage), stage_weights(tmp_path / "replay", stage)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{stage}: resumed weights differ"
    assert resumed["loss_matrix"] == finished[1]["loss_matrix"]


def test_appending_a_stage_continues_a_finished_run_and_other_changes_are_refused(finished, tmp_path):
    values, _ = finished
    run = tmp_path / "run"
    shutil.copytree(values["output_dir"], run, symlinks=True)
    moved = {**copy.deepcopy(values), "output_dir": str(run)}
    with pytest.raises(ConfigError, match="base_lr"):
        run_continual(config_of({**moved, "base_lr": 2e-3}))
    reordered = copy.deepcopy(moved)
    reordered["stages"][1]["steps"] = 7
    with pytest.raises(ConfigError, match="appending"):
        run_continual(config_of(reordered))
    extended = copy.deepcopy(moved)
    extended["stages"].append({"task": "t1", "steps": 2, "lr_factor": 0.4, "replay": {"t2": 0.1, "t3": 0.1}})
    results = run_continual(config_of(extended))
    assert [r["name"] for r in results["stages"]] == ["01_t1", "02_t2", "03_t3", "04_t1"]
    assert results["stages"][3]["status"]["t1"] == LEARNT  # t1 relearnt: its reference loss is the new one


@pytest.mark.parametrize(
    "stages_, message",
    [
        (
            [{"task": "t1"}, {"task": "t2", "replay": {"t3": 0.2}}, {"task": "t3"}],
            "not learnt yet .*first learnt in stage 3",
        ),
        ([{"task": "t1"}, {"task": "t2", "replay": {"t9": 0.2}}], "not learnt yet .*no stage learns it"),
        ([{"task": "t9"}], "unknown task 't9'"),
        ([{"task": "t1"}, {"task": "t2", "replay": {"t1": 0.0, "t2": 0.0}}], "sum to a positive"),
        ([{"task": "t1"}, {"task": "t2", "replay": {"t1": 1.0}}], "leaving nothing"),
        ([{"task": "t1"}, {"task": "t2", "replay": {"t1": -0.1}}], "must be a number >= 0"),
        ([{"task": "t1", "lr_factr": 0.5}], "unknown flag --lr_factr"),
        ([{"task": "t1", "steps": 0}], "steps must be >= 1"),
    ],
)
def test_bad_stage_configs_are_clear_errors(roots, tmp_path, stages_, message):
    with pytest.raises(ConfigError, match=message):
        config_of({**settings(roots, tmp_path), "stages": stages_})


def test_bad_task_data_is_refused_before_training(roots, tmp_path):
    wide = copy.deepcopy(FEATURES)
    wide["action"]["shape"] = [40]
    episodes = make_episodes(seed=5, episodes=[(10, "wave")] * 2)
    for ep in episodes:
        ep["action"] = np.zeros((10, 40), np.float32)
    root = write_v30(tmp_path / "wide", episodes, ["wave"] * 2, features=wide)
    values = settings(roots, tmp_path / "out")
    values["tasks"].append({"id": "wide", "root": str(root)})
    values["stages"].append({"task": "wide", "steps": 2})
    with pytest.raises(
        ConfigError, match=r"stage 4 \(wide\).*'action' has 40 dims, more than the model's max_action_dim 32"
    ):
        run_continual(config_of(values))
    narrow = copy.deepcopy(FEATURES)
    narrow["action"]["shape"] = [2]
    for ep in episodes:
        ep["action"] = np.zeros((10, 2), np.float32)
    values["tasks"][-1]["root"] = str(write_v30(tmp_path / "narrow", episodes, ["wave"] * 2, features=narrow))
    with pytest.raises(DatasetError, match=r"task 'wide' has features .* but task 't1' has"):
        run_continual(config_of(values))
    values["tasks"][-1]["root"] = str(tmp_path / "missing")
    with pytest.raises(DatasetError, match=r"task 'wide'.*not a directory"):
        run_continual(config_of(values))
    assert not (tmp_path / "out" / "replay" / "stages").exists()
    with pytest.raises(ConfigError, match="needs `tasks` and `stages`"):
        ContinualConfig.from_flags(["--output_dir=x"])
    with pytest.raises(ConfigError, match="--method must be one of"):
        config_of({**settings(roots, tmp_path), "method": "ewc"})
