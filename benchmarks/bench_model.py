"""The model-speed suite: `smolvla bench` over the matrix the docs report, into benchmarks/results/model_<device>.json.

    .venv/bin/python benchmarks/bench_model.py [--presets tiny,smolvla_base] [--threads 2]   # ~25 min on 2 cores

Parts (each a `BenchConfig`; a row per preset × cameras × batch × dtype × mode):
  tiny: 1–3 cameras, batch 1 and 8, fp32 / bf16, eager; compiled and whole-chunk compiled at 1 camera, batch 1;
  full-size (smolvla_base): 1 camera, batch 1, fp32 eager and compiled, 1/2/5/10 steps; 2 and 3 cameras; batch 8;
  bf16 (on a CPU without bf16 matmul instructions this is the slow row, kept to show it).
OpenMP is left at libgomp's default wait policy (threads spin briefly between ops), as `smolvla bench` and
`smolvla serve` do; `bench_ablation.py` measures what the PASSIVE policy used for training would cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from smolvla.atomic import atomic_write_text
from smolvla.bench import BenchConfig, markdown_table, run_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import RESULTS


def suite(presets: list[str], device: str) -> list[BenchConfig]:
    parts = []
    if "tiny" in presets:
        parts += [
            BenchConfig(cameras=(1, 2, 3), batch_sizes=(1, 8), dtypes=("fp32", "bf16"), reps=20),
            BenchConfig(modes=("compiled",), train=False, reps=20),
            BenchConfig(modes=("compiled_chunk",), steps=(10,), train=False, reps=20),
        ]
    if "smolvla_base" in presets:
        full = {"presets": ("smolvla_base",), "reps": 3}
        parts += [
            BenchConfig(modes=("eager", "compiled"), **full),
            BenchConfig(cameras=(2, 3), steps=(10,), **full),
            BenchConfig(batch_sizes=(8,), steps=(10,), **full | {"reps": 1}),
            BenchConfig(dtypes=("bf16",), steps=(1, 10), **full | {"reps": 1}),
        ]
        if device == "cuda":
            parts.append(BenchConfig(dtypes=("bf16",), modes=("eager", "compiled"), **full))
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,smolvla_base")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    rows, machine = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, part in enumerate(suite(args.presets.split(","), args.device)):
            part.threads, part.device, part.output = args.threads, args.device, f"{tmp}/{i}.json"
            result = run_bench(part)
            rows += result["rows"]
            machine = result["machine"]
    print("\n" + markdown_table(rows, BenchConfig()))  # default columns: the union of the parts'
    out = RESULTS / f"model_{machine['device']}.json"
    atomic_write_text(out, json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
