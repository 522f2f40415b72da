"""Closed-loop success after every stage on Meta-World: the success matrix and LIBERO metrics of a real run."""

import json
from pathlib import Path

import pytest

from smolvla.continual.config import ContinualConfig
from smolvla.continual.runner import run_continual
from smolvla.sim.collect import CollectConfig, collect
from smolvla.sim.metaworld_env import MetaWorldConfig


@pytest.fixture(scope="module")
def task_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("continual_sim")
    roots = {}
    for task in ("reach", "drawer-close"):
        env = MetaWorldConfig(task=task, cameras=("corner2",), image_size=32, max_steps=150)
        roots[task] = collect(CollectConfig(env=env, episodes_per_task=2, output_dir=str(base / task)), progress=False)
    return roots


def test_success_matrix_and_metrics_from_simulated_tasks(task_roots, tmp_path):
    config = ContinualConfig.from_mapping({
        "output_dir": str(tmp_path),
        "base_lr": 1e-3,
        "train": {"batch_size": 4, "num_workers": 0, "progress": False,
                  "policy": {"chunk_size": 5, "n_action_steps": 5, "image_size": 32}},
        "eval": {"episodes": 1, "num_workers": 1, "max_steps": 15, "val_batches": 1},
        "tasks": [{"id": f"task{i + 1}", "root": str(root), "sim_task": task}
                  for i, (task, root) in enumerate(task_roots.items())],
        "stages": [{"task": "task1", "steps": 3}, {"task": "task2", "steps": 3, "replay": {"task1": 0.3}}],
    })  # fmt: skip
    results = run_continual(config)
    success = results["success_matrix"]
    assert success[0][1] is None  # task 2 is not evaluated before it is learnt
    assert all(0.0 <= v <= 1.0 for row in success for v in row if v is not None)
    assert set(results["metrics"]) == {"FWT", "NBT", "AUC"}
    assert results["metrics"]["NBT"] == pytest.approx(success[0][0] - success[1][0])
    info = json.loads((Path(tmp_path) / "replay" / "stages" / "02_task2" / "eval" / "eval_info.json").read_text())
    assert sorted(info["per_task"]) == ["drawer-close", "reach"] and info["per_task"]["reach"]["episodes"] == 1
