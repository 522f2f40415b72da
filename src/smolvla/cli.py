"""`smolvla` command line. Flags take LeRobot's `--name=value` form.

Commands:
  smoke   build a tiny policy, train it briefly on synthetic demonstrations, sample a chunk, save and reload it:
          a two-minute check that an install works end to end (the README's main job until `smolvla demo` lands).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


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


def smoke(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smolvla", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("smoke", help="train a tiny policy on synthetic data, sample, save, reload")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output_dir", default="outputs/smoke")
    p.set_defaults(func=smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
