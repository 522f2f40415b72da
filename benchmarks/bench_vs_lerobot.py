"""smolvla beside LeRobot 0.6.1 on the same weights and inputs: chunk and training-step time, alternating in one run.

    bash ../shared/lerobot_ref/lerobot_ref_env.sh        # once: builds /tmp/lerobot-ref (README there)
    .venv/bin/python benchmarks/bench_vs_lerobot.py [--presets tiny,full] [--engines torch,onnx,onnx_int8]
        [--rounds 5] [--reps 3]

Each engine is a worker process that loads the checkpoint once (LeRobot's random-weight checkpoint from
`lerobot_ref_bench.py`, the `smolvla_base` architecture for `full`), checks its 10-step chunk against LeRobot's for
the same observation and noise, and then waits. The driver asks the engines in turn, round after round, for one
measurement each (the median of --reps calls after a warm-up), so all engines are timed in the same minutes and
each ratio to LeRobot is taken within its round (this machine drifts 10-30 % between minutes: only ratios measured
together count). Engines: `lerobot`; `torch` (smolvla eager fp32); `onnx` / `onnx_int8` (smolvla's ONNX export on
ONNX Runtime; the export is written once beside the checkpoint and its time reported). Measurements: chunk at 1 and
10 denoising steps (batch 1) and a training step (forward + backward) at batch 1 and 8 (PyTorch engines).
2 threads and OpenMP's default wait policy everywhere (lerobot_side's one-thread, passive setting is undone).
Writes benchmarks/results/bench_vs_lerobot.json and prints a markdown table (docs/benchmarks.md).
Without /tmp/lerobot-ref it says how to build it and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIDE = REPO.parent / "shared" / "lerobot_ref"
LEROBOT_PY = Path("/tmp/lerobot-ref/bin/python")
RESULTS = REPO / "benchmarks" / "results" / "bench_vs_lerobot.json"
THREADS = 2
CHUNK_STEPS = (1, 10)
TRAIN_BATCHES = (1, 8)
PYTORCH_ENGINES = ("lerobot", "torch")


# --- worker side: one engine, commands on stdin, JSON lines on stdout ---
def _worker(engine: str, ckpt: Path) -> None:
    import torch

    sys.path.insert(0, str(SIDE))
    if engine == "lerobot":
        import lerobot_side  # noqa: F401  (offline env, torchvision stub; it sets 1 thread, reset below)
        from lerobot_ref_bench import load_inputs, load_lerobot_policy, train_step_fn

        policy = load_lerobot_policy(ckpt)
        obs, noise, train_batch = load_inputs(ckpt)

        def chunk(steps: int):
            policy.config.num_steps = steps
            policy.reset()
            return policy.predict_action_chunk(dict(obs), noise=noise)

        def train_step(batch: int):
            return train_step_fn(policy, train_batch, batch)
    else:
        from safetensors.torch import load_file

        from smolvla.runtime import load_policy

        started = time.perf_counter()
        policy = load_policy(ckpt, engine)  # the ONNX engines export here the first time
        load_s = time.perf_counter() - started
        io = load_file(str(ckpt / "inputs.safetensors"))
        obs = {k: v for k, v in io.items() if k.startswith("observation.")}
        noise = io["sample_noise"]
        train_batch = {**obs, "action": io["action"], "action_is_pad": io["action_is_pad"]}

        def chunk(steps: int):
            return policy.predict_chunk(obs, noise=noise, num_steps=steps)

        def train_step(batch: int):
            expanded = {k: v.expand(batch, *v.shape[1:]).clone() for k, v in train_batch.items()}
            expanded["action"] = torch.randn(expanded["action"].shape, generator=torch.Generator().manual_seed(batch))

            def step():
                policy.train()
                policy.compute_loss(expanded).backward()
                policy.zero_grad(set_to_none=True)
                policy.eval()

            return step

    torch.set_num_threads(THREADS)  # after lerobot_side, which pins LeRobot to one thread

    def timed(fn, reps: int) -> list[float]:
        fn()  # warm-up
        out = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1e3)
        return out

    with torch.no_grad():
        reference = chunk(10).float()
    ready = {"ready": True, "chunk": reference.tolist(), "load_s": locals().get("load_s")}
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        if command["op"] == "chunk":
            with torch.no_grad():
                ms = timed(lambda n=command["steps"]: chunk(n), command["reps"])
        else:
            ms = timed(train_step(command["batch"]), command["reps"])
        print(json.dumps({"ms": ms}), flush=True)


# --- driver side ---
class Worker:
    def __init__(self, engine: str, ckpt: Path, log: Path):
        python = str(LEROBOT_PY) if engine == "lerobot" else sys.executable
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "src"))
        env.pop("OMP_WAIT_POLICY", None)  # every engine with OpenMP's default wait policy (set before torch loads)
        self.engine = engine
        self.log = open(log, "w")  # noqa: SIM115 (open for the worker's lifetime)
        self.proc = subprocess.Popen(
            [python, __file__, "--worker", engine, "--ckpt", str(ckpt)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=REPO,
        )  # fmt: skip
        started = time.perf_counter()
        self.ready = self._read()
        self.ready["ready_s"] = time.perf_counter() - started

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.engine} died; see {self.log.name}")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, **command) -> list[float]:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()["ms"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        self.log.close()


def max_diff(a: list, b: list) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def run_preset(preset: str, ckpt: Path, engines: list[str], rounds: int, reps: int, work: Path) -> dict:
    if not (ckpt / "inputs.safetensors").is_file():
        print(f"building the {preset} LeRobot checkpoint in {ckpt}", flush=True)
        subprocess.run([str(LEROBOT_PY), str(SIDE / "lerobot_ref_bench.py"), "--preset", preset, "--out", str(ckpt)],
                       check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))  # fmt: skip
    workers, result = {}, {"checkpoint": str(ckpt), "engines": {}, "rounds": []}
    try:
        for engine in ["lerobot", *engines]:  # loaded one at a time: exports and loads do not overlap
            workers[engine] = Worker(engine, ckpt, work / f"{preset}_{engine}.log")
            print(f"[{preset}] {engine} ready in {workers[engine].ready['ready_s']:.1f} s", flush=True)
        reference = workers["lerobot"].ready["chunk"]
        for engine, worker in workers.items():
            result["engines"][engine] = {
                "ready_s": round(worker.ready["ready_s"], 1),
                "max_abs_chunk_diff_vs_lerobot": max_diff(worker.ready["chunk"], reference),
            }
        measures = [("chunk", {"steps": s}) for s in CHUNK_STEPS] + [("train", {"batch": b}) for b in TRAIN_BATCHES]
        for r in range(rounds):
            row: dict[str, dict[str, float]] = {}
            for op, args in measures:
                name = f"{op}_{next(iter(args.values()))}"
                for engine, worker in workers.items():
                    if op == "train" and engine not in PYTORCH_ENGINES:
                        continue
                    time.sleep(0.2)  # the previous engine's spinning threads go to sleep first
                    row.setdefault(name, {})[engine] = statistics.median(worker.ask(op=op, reps=reps, **args))
            result["rounds"].append(row)
            print(f"[{preset}] round {r + 1}/{rounds}: " + json.dumps(
                {k: {e: round(v, 1) for e, v in d.items()} for k, d in row.items()}), flush=True)  # fmt: skip
    finally:
        for worker in workers.values():
            worker.close()
    result["summary"] = summarize(result["rounds"])
    return result


def summarize(rounds: list[dict]) -> dict:
    """Per measurement and engine: median ms over rounds and the median (min-max) of the per-round ratio to LeRobot."""
    out = {}
    for name in rounds[0]:
        out[name] = {}
        for engine in rounds[0][name]:
            ms = [r[name][engine] for r in rounds]
            ratios = [r[name][engine] / r[name]["lerobot"] for r in rounds]
            out[name][engine] = {"ms": round(statistics.median(ms), 1),
                                 "ratio": round(statistics.median(ratios), 3),
                                 "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}  # fmt: skip
    return out


def table(results: dict) -> str:
    lines = ["| preset | measurement | engine | ms (median) | × LeRobot (median, range) | max abs Δ chunk |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for preset, result in results["presets"].items():
        for name, engines in result["summary"].items():
            for engine, s in engines.items():
                diff = result["engines"][engine]["max_abs_chunk_diff_vs_lerobot"]
                lines.append(f"| {preset} | {name} | {engine} | {s['ms']} | {s['ratio']:.2f} "
                             f"({s['ratio_range'][0]:.2f}–{s['ratio_range'][1]:.2f}) | {diff:.1e} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--presets", default="tiny,full")
    parser.add_argument("--engines", default="torch,onnx,onnx_int8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", default="/tmp/bench-vs-lerobot")
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker, Path(args.ckpt))
    if not LEROBOT_PY.is_file():
        print(f"LeRobot 0.6.1 is not built here ({LEROBOT_PY}): run `bash {SIDE}/lerobot_ref_env.sh` first "
              "(README there); skipping.")  # fmt: skip
        return None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    engines = [e for e in args.engines.split(",") if e]
    machine = {"cpu": _cpu(), "cores": os.cpu_count(), "threads": THREADS, "python": platform.python_version()}
    results = {"machine": machine, "rounds": args.rounds, "reps": args.reps, "presets": {}}
    for preset in args.presets.split(","):
        results["presets"][preset] = run_preset(preset, Path(f"/tmp/lr_{preset}"), engines, args.rounds, args.reps,
                                                work)  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_name(f".{RESULTS.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    print(table(results))
    print(f"wrote {RESULTS}")
    return None


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
