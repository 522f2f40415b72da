"""`smolvla` command line. Flags take LeRobot's draccus form: `--name=value`, nested `--env.task=push`.

Commands:
  smoke    build a tiny policy, train it briefly on synthetic demonstrations, sample a chunk, save and reload it:
           a two-minute check that an install works end to end.
  collect  run Meta-World's scripted experts and write their successful episodes as a LeRobot v3.0 dataset.
  train    train SmolVLA on local LeRobot datasets (from scratch or `--policy.path` fine-tuning), with checkpoints,
           exact `--resume=true`, TensorBoard, validation loss; multi-process via `accelerate launch`.
  demo     the whole loop on a built-in default: collect Meta-World demos, train a small SmolVLA, evaluate it.
  eval     run a policy (a checkpoint, `expert` or `random`) closed-loop on Meta-World tasks: success per task and
           difficulty, episode length, chunk latency; JSON, a bar chart and rollout videos.

`smolvla <command> --help` lists a command's flags with their defaults.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SmokeConfig:
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2
    output_dir: str = "outputs/smoke"


def _synthetic_batch(policy, batch_size: int, generator):
    """Demonstrations with learnable structure: the action chunk is a fixed linear map of the state, ramped in time."""
    import torch

    cfg = policy.config
    state = torch.randn(batch_size, cfg.state_dim, generator=generator)
    ramp = torch.linspace(0.0, 1.0, cfg.chunk_size)[None, :, None]
    mix = torch.linspace(-1.0, 1.0, cfg.state_dim * cfg.action_dim).view(cfg.state_dim, cfg.action_dim)
    actions = (state @ mix)[:, None, :] * ramp
    batch = {key: torch.rand(batch_size, *feat.shape, generator=generator) for key, feat in cfg.image_features.items()}
    batch.update(
        {
            "observation.state": state,
            "observation.language.tokens": torch.tensor([[1, 2, 3, 4]] * batch_size),
            "observation.language.attention_mask": torch.ones(batch_size, 4, dtype=torch.bool),
            "action": actions,
        }
    )
    return batch


def smoke(args: SmokeConfig) -> int:
    import torch

    from smolvla import SmolVLAPolicy

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    policy = SmolVLAPolicy.from_preset("tiny", train_expert_only=False)
    print(f"tiny SmolVLA: {policy.num_parameters():,} parameters, {policy.num_parameters(True):,} trainable")
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=args.lr, betas=policy.config.optimizer_betas
    )
    start = time.perf_counter()
    losses = []
    policy.train()
    for step in range(1, args.steps + 1):
        loss = policy.compute_loss(_synthetic_batch(policy, args.batch_size, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), policy.config.optimizer_grad_clip_norm)
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    train_s = time.perf_counter() - start
    policy.eval()
    test_batch = _synthetic_batch(policy, 4, generator)
    noise = torch.randn(4, policy.config.chunk_size, policy.config.max_action_dim, generator=generator)
    start = time.perf_counter()
    chunk = policy.predict_chunk(test_batch, noise=noise)
    chunk_ms = (time.perf_counter() - start) * 1e3
    error = (chunk - test_batch["action"]).pow(2).mean().item()
    baseline = test_batch["action"].pow(2).mean().item()
    out = Path(args.output_dir)
    policy.save_pretrained(out / "pretrained_model")
    reloaded = SmolVLAPolicy.from_pretrained(out / "pretrained_model")
    same = torch.equal(reloaded.predict_chunk(test_batch, noise=noise), chunk)
    first, last = sum(losses[:10]) / min(10, len(losses)), sum(losses[-10:]) / min(10, len(losses))
    summary = {
        "steps": args.steps,
        "train_seconds": round(train_s, 2),
        "loss_first10": round(first, 4),
        "loss_last10": round(last, 4),
        "chunk_mse": round(error, 4),
        "chunk_mse_zero_baseline": round(baseline, 4),
        "chunk_ms": round(chunk_ms, 1),
        "reload_identical": same,
        "checkpoint": str(out / "pretrained_model"),
    }
    print(json.dumps(summary, indent=2))
    ok = same and last < first
    print("smoke run OK" if ok else "smoke run FAILED: the loss did not fall or the reload differs")
    return 0 if ok else 1


def collect(config) -> int:
    from smolvla.data.meta import load_meta
    from smolvla.sim.collect import collect as run

    root = run(config)
    meta = load_meta(root)
    print(f"wrote {len(meta.length)} episodes, {int(meta.length.sum())} frames, {len(meta.tasks)} tasks to {root}")
    return 0


def train(config) -> int:
    from smolvla.train.trainer import train as run

    result = run(config)
    print(f"trained {result.step} steps in {result.seconds:.0f} s; final checkpoint: {result.checkpoint}")
    print(f"metrics: {result.metrics}  TensorBoard: tensorboard --logdir {result.tensorboard}")
    return 0


def demo(config) -> int:
    from smolvla.demo import run_demo

    return run_demo(config)


def evaluate(config) -> int:
    from smolvla.eval.evaluate import evaluate as run

    summary = run(config)
    print(f"results: {Path(config.output_dir) / 'eval_info.json'}  chart: {summary['chart']}")
    for video in summary["videos"]:
        print(f"video: {video}")
    return 0


def _configs():
    """Command → (default config factory, runner); configs import lazily so `smolvla --help` stays fast."""

    def collect_config():
        from smolvla.sim.collect import CollectConfig

        return CollectConfig()

    def eval_config():
        from smolvla.eval.evaluate import EvalConfig

        return EvalConfig()

    def train_config():
        from smolvla.train.config import TrainConfig

        return TrainConfig()

    def demo_config():
        from smolvla.demo import DemoConfig

        return DemoConfig()

    return {
        "smoke": (SmokeConfig, smoke),
        "collect": (collect_config, collect),
        "train": (train_config, train),
        "eval": (eval_config, evaluate),
        "demo": (demo_config, demo),
    }


def _parse(name: str, make_config, flags: list[str]):
    from smolvla.configs import apply_flags

    if name == "train":  # --config_path files and --resume rebuild the config from files
        from smolvla.train.config import TrainConfig

        return TrainConfig.from_flags(flags)
    return apply_flags(make_config(), flags)


def main(argv: list[str] | None = None) -> int:
    from smolvla.configs import describe
    from smolvla.errors import SmolVLAError

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
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
