"""Language that decides the task: one policy trained on pairs of Meta-World tasks that share a scene and differ by
instruction, evaluated on each task told its own instruction and told its partner's (`smolvla eval
--env.instruction=...`). A policy that follows language succeeds on the first and fails on the second.

    .venv/bin/python benchmarks/bench_language_swap.py [--config benchmarks/configs/language_swap.yaml]
        [--output_dir DIR]

Collection and training are `bench_metaworld`'s stages (resumable); each evaluation cell is kept once finished
(`<out>/eval/<task>/<own|partner>/eval_info.json`). Prints the swap matrix and writes
benchmarks/results/<recipe name>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_metaworld import Recipe, StageLog, collect_stage, eval_config, train_stage
from benchmarks.report import report
from smolvla.errors import ConfigError
from smolvla.sim.tasks import instruction, resolve_tasks

CONFIG = Path(__file__).parent / "configs" / "language_swap.yaml"


def pairs_of(tasks: list[str]) -> dict[str, str]:
    """task → its partner, from a task list written pair by pair (a, b, c, d → a↔b, c↔d)."""
    if len(tasks) % 2:
        raise ConfigError(f"tasks must come in pairs that share a scene, got {len(tasks)}: {tasks}")
    return {t: tasks[i ^ 1] for i, t in enumerate(tasks)}


def swap_stage(recipe: Recipe, policy: Path, tasks: list[str], out: Path, log: StageLog) -> list[dict]:
    from smolvla.eval.evaluate import evaluate

    rows = []
    for task, partner in pairs_of(tasks).items():
        row = {"task": task, "partner": partner}
        for told, sentence in (("own", None), ("partner", instruction(partner))):
            info = out / "eval" / task / told / "eval_info.json"
            if not info.is_file():
                started = time.perf_counter()
                print(f"[eval] {task} told {sentence or 'its own instruction'}", flush=True)
                try:
                    evaluate(eval_config(recipe, policy, task, info.parent, sentence), progress=False)
                finally:
                    log.add("eval", time.perf_counter() - started, f"{task}/{told}")
            summary = json.loads(info.read_text())["per_task"][task]
            row[told] = round(100 * summary["success_rate"], 1)
            row[f"{told}_instruction"] = summary["instruction"]
        rows.append(row)
    return rows


def run(recipe: Recipe, notes: dict | None = None) -> list[dict]:
    """Collect, train and the swap matrix, every finished piece of an earlier run reused; `notes` (what else shaped
    the run: a pilot's head) are recorded beside the recipe in the result JSON."""
    out = Path(recipe.output_dir)
    tasks, log = resolve_tasks(recipe.tasks), StageLog(out)
    pairs_of(tasks)  # checked before anything runs
    policy = train_stage(recipe, collect_stage(recipe, tasks, out, log), out, log)
    rows = swap_stage(recipe, policy, tasks, out, log)
    machine = {"recipe": dataclasses.asdict(recipe), "policy": str(policy),
               "wall_s": {k: v["seconds"] for k, v in log.data.items()}, **(notes or {})}  # fmt: skip
    columns = {"task (scene)": "task", "told its own instruction %": "own", "told its partner's %": "partner",
               "partner's instruction": "partner_instruction"}  # fmt: skip
    report(recipe.name, machine, rows, columns)
    return rows


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = Recipe.load(args.config)
    recipe.output_dir = args.output_dir or recipe.output_dir
    run(recipe)


if __name__ == "__main__":
    main()
