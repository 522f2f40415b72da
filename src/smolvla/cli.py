"""`smolvla` command line. Flags take LeRobot's draccus form: `--name=value`, nested `--env.task=push`.

Commands:
  collect  run Meta-World's scripted experts and write their successful episodes as a LeRobot v3.0 dataset.
  check-dataset  cross-check a dataset's info.json, episode table, data files and videos (what train checks when
           it opens a dataset; `--dataset.verify=false` skips that there).
  train    train SmolVLA on local LeRobot datasets (from scratch or `--policy.path` fine-tuning), with checkpoints,
           exact `--resume=true`, TensorBoard, validation loss; multi-process via `accelerate launch`.
  continual  learn tasks one after another (stages from a YAML `--config_path`) with replay of earlier tasks, a
           per-stage lr factor and freezing; after each stage, validation loss and Meta-World success on every task
           seen so far; success matrix, FWT/NBT/AUC. `--method=sequential|multitask` runs the baselines.
  reflow   straighten a trained policy's flow: k rounds of reflow on its own (noise, ODE solution) pairs, each round
           training a student from its teacher (`--policy.teacher_path`), pairs solved once into a cache.
  distill  train a one-step student from a (rectified) teacher: noise → the teacher's actions in one Euler step.
  serve    serve a checkpoint over gRPC to robot clients: typed messages (no pickle), localhost by default,
           optional token and TLS, requests batched when several clients wait, per-request timing.
  client   drive a robot (Meta-World, or a dataset episode replayed) from a policy server: sync or async execution,
           real-time chunking, similarity filter; success, task time, stalls, chunk-join jumps, round trips.
  demo     the whole loop on a built-in default: collect Meta-World demos, train a small SmolVLA, evaluate it.
  eval     run a policy (a checkpoint, `expert` or `random`) closed-loop on Meta-World tasks: success per task and
           difficulty, episode length, chunk latency; JSON, a bar chart and rollout videos.
  export   a checkpoint as ONNX graphs (prefix encoder + expert velocity step), fp32 or `--quantize=int8`, verified
           against PyTorch; `--runtime=onnx` on serve / eval / bench uses (and writes, once) such an export.
  bench    time chunks (1/2/5/10 steps) and training steps of the tiny / full-size architectures on this machine:
           cameras, batch, fp32/bf16, eager/compiled; peak memory, FLOPs and the fraction of the matmul peak.

`smolvla <command> --help` lists a command's flags with their defaults.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from smolvla.errors import SmolVLAError
from smolvla.flags import apply_flags, describe


def collect(config) -> int:
    from smolvla.data.meta import load_meta
    from smolvla.sim.collect import collect as run

    root = run(config)
    meta = load_meta(root)
    print(f"wrote {len(meta.length)} episodes, {int(meta.length.sum())} frames, {len(meta.tasks)} tasks to {root}")
    return 0


def check_dataset(config) -> int:
    from smolvla.data.verify import check_dataset as run

    print(run(config))
    return 0


def train(config) -> int:
    from smolvla.reflow.hooks import hooks_for
    from smolvla.train.trainer import train as run

    evaluator = None
    if config.eval_freq:
        from smolvla.eval.training import MetaWorldEvaluator

        evaluator = MetaWorldEvaluator.from_config(config)
    result = run(config, hooks_for(config), evaluator)
    print(f"trained {result.step} steps in {result.seconds:.0f} s; final checkpoint: {result.checkpoint}")
    if result.best is not None:
        print(f"best checkpoint: step {result.best.step} (success {result.best.success:.1%}), checkpoints/best")
    print(f"metrics: {result.metrics}  TensorBoard: tensorboard --logdir {result.tensorboard}")
    return 0


def continual(config) -> int:
    from smolvla.continual.runner import run_continual

    run_continual(config)
    return 0


def reflow(config) -> int:
    from smolvla.reflow.run import run_reflow

    for k, path in enumerate(run_reflow(config), start=1):
        print(f"round {k}: {path}")
    return 0


def distill(config) -> int:
    from smolvla.reflow.run import run_distill

    print(f"one-step policy: {run_distill(config)}")
    return 0


def serve(config) -> int:
    from smolvla.serve.server import PolicyServer

    server = PolicyServer(config)
    server.start()
    print(server.describe(), flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def client(config) -> int:
    from smolvla.serve.drive import run_client

    summary = run_client(config)
    trips = summary["round_trip_ms"]
    print(f"success {summary['success_rate']:.2f} over {summary['episodes']} episodes, task time "
          f"{summary['task_seconds']:.2f} s, round trip p50 {trips['p50']} ms p99 {trips['p99']} ms, "
          f"{summary['control_hz']:.1f} control steps/s")  # fmt: skip
    if "path" in summary:
        print(f"stats: {summary['path']}")
    return 0


def demo(config) -> int:
    from smolvla.demo import run_demo

    return run_demo(config)


def bench(config) -> int:
    from smolvla.bench import run_bench

    run_bench(config)
    print(f"wrote {config.output}")
    return 0


def export(config) -> int:
    import json

    from smolvla.runtime.export import export_policy
    from smolvla.runtime.onnx_policy import MANIFEST

    directory = export_policy(config)
    verify = json.loads((directory / MANIFEST).read_text())["verify"]
    print(f"exported {directory} ({config.quantize}); chunk vs PyTorch: max |Δ| {verify['max_abs_chunk_diff']:.3g}")
    return 0


def evaluate(config) -> int:
    from smolvla.eval.evaluate import evaluate as run

    summary = run(config)
    print(f"results: {Path(config.output_dir) / 'eval_info.json'}  chart: {summary['chart']}")
    for video in summary["videos"]:
        print(f"video: {video}")
    return 0


# Command → (module, config class, runner). Everything a command needs is imported when it runs, not here: the
# OpenMP wait policy below must be set before torch loads, and `smolvla --help` stays instant.
_COMMANDS = {
    "collect": ("smolvla.sim.collect", "CollectConfig", collect),
    "check-dataset": ("smolvla.data.verify", "CheckDatasetConfig", check_dataset),
    "train": ("smolvla.reflow.config", "ReflowTrainConfig", train),
    "eval": ("smolvla.eval.evaluate", "EvalConfig", evaluate),
    "continual": ("smolvla.continual.config", "ContinualConfig", continual),
    "reflow": ("smolvla.reflow.config", "ReflowConfig", reflow),
    "distill": ("smolvla.reflow.config", "DistillConfig", distill),
    "serve": ("smolvla.serve.server", "ServeConfig", serve),
    "client": ("smolvla.serve.drive", "RunClientConfig", client),
    "demo": ("smolvla.demo", "DemoConfig", demo),
    "bench": ("smolvla.bench", "BenchConfig", bench),
    "export": ("smolvla.runtime.export", "ExportConfig", export),
}
# Commands whose point is latency: their OpenMP threads keep libgomp's default of spinning briefly between ops.
# Every other command sleeps them at once (PASSIVE), which leaves the cores to data-loader and simulator
# processes but costs each small op a thread wake-up (the tiny chunk: ~3x slower on 2 cores, docs/benchmarks.md).
_LATENCY_COMMANDS = ("serve", "bench")


def _configs():
    """Command → (default config factory, runner)."""

    def factory(module: str, name: str):
        return lambda: getattr(importlib.import_module(module), name)()

    return {command: (factory(module, name), run) for command, (module, name, run) in _COMMANDS.items()}


def _parse(name: str, make_config, flags: list[str]):
    if name in ("train", "continual", "reflow", "distill"):  # settings files, --resume, checks across fields
        return make_config().from_flags(flags)
    return apply_flags(make_config(), flags)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in _LATENCY_COMMANDS:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch first loads OpenMP
    commands = _configs()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, flags = argv[0], argv[1:]
    if name not in commands:
        print(f"smolvla: unknown command {name!r}; commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    make_config, run = commands[name]
    if any(flag in ("-h", "--help") for flag in flags):
        print(f"smolvla {name} flags (defaults):\n{describe(make_config())}")
        return 0
    try:
        return run(_parse(name, make_config, flags))
    except SmolVLAError as e:
        print(f"smolvla {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
