"""The training loop: flow-matching imitation on LeRobot datasets, on `accelerate` (1 CPU to many GPUs, unchanged).

One optimizer step = `grad_accum_steps` micro-batches of `batch_size` samples (global, split over processes). The
loss of a micro-batch is LeRobot's mean over its valid action elements taken over the *global* batch (one scalar
all-reduce of the element count), so N processes compute the same gradient as one process with the same batch.
Data order and noise are pure functions of (seed, batch index) (see `smolvla.train.data`), so a run resumed from its
last checkpoint after a SIGKILL reaches bit-identical weights on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from smolvla.errors import CheckpointError, ConfigError
from smolvla.train import checkpoint as ckpt
from smolvla.train.build import (
    build_policy,
    build_processors,
    check_compatible,
    make_tokenizer,
    planned_chunk_size,
    pretrained_dir,
)
from smolvla.train.config import PolicyArgs, TrainConfig, check_resumable
from smolvla.train.data import GlobalBatches, batch_seed, load_train_data
from smolvla.train.optim import Schedule, make_optimizer, make_scheduler

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TRAIN_STREAM, VAL_STREAM = 0, 1


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    checkpoint: Path | None  # checkpoints/<step>/ of the final save
    train_loss: float | None  # mean loss over the last logging interval
    val_loss: float | None
    metrics: Path  # metrics.jsonl: one JSON object per logged step
    tensorboard: Path
    seconds: float


class EMA:
    """Exponential moving average of the trainable weights (the shadow is what gets saved as the policy)."""

    def __init__(self, params: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.params = params
        self.shadow = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped(self):
        """Temporarily put the averaged weights into the model (for saving)."""
        raw = {k: p.detach().clone() for k, p in self.params.items()}
        for name, p in self.params.items():
            p.copy_(self.shadow[name])
        try:
            yield raw
        finally:
            for name, p in self.params.items():
                p.copy_(raw[name])


class Trainer:
    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator

        config.validate()
        self.config = config
        self.output_dir = Path(config.output_dir)
        device = config.policy.device
        if device not in (None, "cpu", "cuda"):
            raise ConfigError(f"--policy.device must be cpu or cuda (accelerate places each process), got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--policy.device=cuda but CUDA is not available")
        # Mixed precision is our own autocast, not accelerate's: its process-wide state could not change between
        # two runs in one Python process (a sweep, the demo, continual training).
        self.accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        if config.batch_size % self.world:
            raise ConfigError(f"--batch_size={config.batch_size} must be divisible by the {self.world} processes")
        self._check_output_dir()
        torch.manual_seed(config.seed)
        self._setup()

    # --- set-up ---
    def _check_output_dir(self) -> None:
        if not self.config.resume and ckpt.has_checkpoints(self.output_dir):
            raise ConfigError(
                f"{self.output_dir} already holds checkpoints: pass --resume=true to continue that run, or choose "
                "another --output_dir"
            )
        if self.main:
            ckpt.remove_partial(self.output_dir)

    def _setup(self) -> None:
        from smolvla.policy import SmolVLAPolicy
        from smolvla.processors import load_processors

        cfg = self.config
        device = str(self.accelerator.device)
        self.start_step, state, self.resumed_from = 0, None, None
        if cfg.resume:
            self.resumed_from = ckpt.last_checkpoint(self.output_dir)
            check_resumable(ckpt.read_train_config(self.resumed_from), cfg, self.resumed_from)
            state = ckpt.load_training_state(self.resumed_from)
            self.start_step = int(state["progress"]["step"])
            policy = SmolVLAPolicy.from_pretrained(self.resumed_from / ckpt.PRETRAINED_MODEL)
            chunk = policy.config.chunk_size
        else:
            chunk = planned_chunk_size(self._policy_args())
        self.data = load_train_data(cfg.dataset, chunk, cfg.seed)
        if state is None:
            policy = build_policy(self._policy_args(), self.data)
            if cfg.policy.use_reflow:  # the student reads the teacher's batches (see smolvla.reflow.teacher)
                self.pre, self.post = load_processors(pretrained_dir(cfg.policy.teacher_path), device=device)
                if cfg.policy.reflow_one_step:
                    policy.config.num_steps = 1  # what the distilled policy is for
            else:
                self.pre, self.post = build_processors(
                    policy, make_tokenizer(cfg.policy, self.data.tasks), self.data, device
                )
        else:
            check_compatible(policy, self.data.features)
            self.pre, self.post = load_processors(self.resumed_from / ckpt.PRETRAINED_MODEL, device=device)
        self.policy = policy.to(self.accelerator.device)
        self.reflow = None
        if cfg.policy.use_reflow:
            from smolvla.reflow.teacher import ReflowTargets

            self.reflow = ReflowTargets(cfg.policy, cfg.dataset, self.policy, cfg.seed, cfg.policy.use_amp)
        trainable = {n: p for n, p in self.policy.named_parameters() if p.requires_grad}
        self.ema = EMA(trainable, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.optimizer = make_optimizer(self.policy)
        self.scheduler = make_scheduler(self.optimizer, Schedule.for_run(self.policy.config, cfg.steps))
        if state is not None:
            self._restore(state)
        if self.policy.config.compile_model:
            # The loss is a method, not forward(): compile it (an instance attribute, so weights keep their names).
            model = self.policy.model
            model.losses = torch.compile(model.losses, mode=self.policy.config.compile_mode)
        self.model, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        self.task_ids = {t: i for i, t in enumerate(self.data.tasks)}
        self.dataset_names = [Path(r).name for r in cfg.dataset.root]

    def _policy_args(self) -> PolicyArgs:
        """The run's policy settings; a reflow student starts from its teacher unless --policy.path says otherwise."""
        args = self.config.policy
        if not args.use_reflow:
            return args
        from smolvla.reflow.teacher import teacher_dir

        teacher_dir(args.teacher_path)  # a missing teacher is named as such, not as a bad --policy.path
        return args if args.path is not None else dataclasses.replace(args, path=args.teacher_path)

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            if self.ema is not None:
                if "raw_weights" not in state:
                    raise CheckpointError(f"{self.resumed_from} was saved without EMA, but this run uses --ema_decay")
                for name, value in self.ema.params.items():
                    self.ema.shadow[name].copy_(value.detach())  # the saved policy is the average
                raw = state["raw_weights"]
                missing = sorted(set(self.ema.params) - set(raw))
                if missing:
                    raise CheckpointError(f"{self.resumed_from}: raw weights lack {missing[:5]}")
                with torch.no_grad():
                    for name, p in self.ema.params.items():
                        p.copy_(raw[name])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(
                f"the training state in {self.resumed_from} does not fit this policy/optimizer: {e}"
            ) from e
        ckpt.set_rng_state(state["rng"])

    # --- data ---
    def _loader(self, start_batch: int, stop_batch: int) -> DataLoader:
        from smolvla.data import WeightedDatasetSampler

        train = self.data.train
        weights = list(self.config.dataset.weights) or [float(s) for s in train.sizes]
        sampler = WeightedDatasetSampler(train.sizes, weights, seed=self.config.seed)
        batches = GlobalBatches(sampler, self.config.batch_size, self.rank, self.world, start_batch, stop_batch)
        workers = self.config.num_workers
        return DataLoader(train, batch_sampler=batches, num_workers=workers)

    def _autocast(self):
        return autocast(self.accelerator.device, self.config.policy.use_amp)

    # --- the loop ---
    def run(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        step = self.start_step
        accum = cfg.grad_accum_steps
        writer = self._writer()
        loader = self._loader(step * accum, cfg.steps * accum)
        batches = iter(loader)
        n_ds = len(self.data.train.datasets)
        device = acc.device
        # Per-sample loss sums (row 0) and counts (row 1) per dataset then per task, reduced over processes at log
        # time; running loss and grad norm stay on the device so a step never waits for a host sync.
        groups = torch.zeros(2, n_ds + len(self.data.tasks), device=device, dtype=torch.float64)
        interval = self._new_interval()
        last_loss, val_loss = None, None
        bar = self._progress(step)
        self.model.train()
        while step < cfg.steps:
            for micro in range(accum):
                index = step * accum + micro
                raw = next(batches)
                task_idx = torch.tensor([self.task_ids[t] for t in raw["task"]], device=device)
                ds_idx = raw["dataset_index"].to(device)
                batch = self.pre(raw)
                noise, t = batch_noise(
                    self.policy, cfg.seed, index, cfg.batch_size, TRAIN_STREAM, self.world, self.rank
                )
                if self.reflow is not None:
                    batch, noise, t = self.reflow(raw, batch, noise, t, index)
                counts = element_counts(batch.get("action_is_pad"), len(raw["task"]), self.policy.config).to(device)
                sync = micro == accum - 1
                with contextlib.nullcontext() if sync else acc.no_sync(self.model), self._autocast():
                    per_sample = self.model(batch, noise=noise, time=t, reduction="none").float()
                    local_sum = (per_sample * counts).sum()
                    totals = acc.reduce(torch.stack([local_sum.detach(), counts.sum()]), reduction="sum")
                    loss = local_sum * self.world / totals[1] / accum
                    acc.backward(loss)
                interval["loss"] += (totals[0] / totals[1]).detach() / accum
                where = torch.cat([ds_idx, task_idx + n_ds])  # each sample counts for its dataset and its task
                per = per_sample.detach().double().repeat(2)
                groups[0].index_add_(0, where, per)
                groups[1].index_add_(0, where, torch.ones_like(per))
            grad_norm = acc.clip_grad_norm_(self.policy.parameters(), self.policy.config.optimizer_grad_clip_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update()
            step += 1
            interval["grad_norm"] += grad_norm.detach()
            interval["steps"] += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.log_freq == 0 or step == cfg.steps:
                last_loss = self._log(step, interval, acc.reduce(groups, reduction="sum"), writer, bar)
                groups.zero_()
                interval = self._new_interval()
            if self.data.val is not None and cfg.val_freq > 0 and (step % cfg.val_freq == 0 or step == cfg.steps):
                val_loss = self._validate(step, writer)
            if cfg.save_checkpoint and (step % cfg.save_freq == 0 or step == cfg.steps):
                self._save(step)
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        acc.wait_for_everyone()
        final = ckpt.checkpoints_dir(self.output_dir) / ckpt.step_name(step)
        return TrainResult(
            output_dir=self.output_dir,
            step=step,
            checkpoint=final if final.is_dir() else None,
            train_loss=last_loss,
            val_loss=val_loss,
            metrics=self.output_dir / METRICS_FILE,
            tensorboard=self.output_dir / TENSORBOARD_DIR,
            seconds=time.perf_counter() - started,
        )

    # --- logging, validation, saving ---
    def _new_interval(self) -> dict[str, Any]:
        zero = torch.zeros((), device=self.accelerator.device)
        return {"loss": zero, "grad_norm": zero.clone(), "steps": 0, "t0": time.perf_counter()}

    def _writer(self):
        if not self.main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.output_dir / METRICS_FILE
        if metrics.is_file():  # drop what a killed run logged after its last checkpoint
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= self.start_step]
            tmp = metrics.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, metrics)
        purge = self.start_step + 1 if self.config.resume else None
        return SummaryWriter(str(self.output_dir / TENSORBOARD_DIR), purge_step=purge)

    def _progress(self, step: int):
        if not (self.main and self.config.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=self.config.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    def _record(self, row: dict[str, Any], writer) -> None:
        if writer is None:
            return
        for key, value in row.items():
            if key != "step" and value is not None and math.isfinite(value):
                writer.add_scalar(key, value, row["step"])
        writer.flush()
        with open(self.output_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _log(self, step: int, interval: dict[str, Any], sums: torch.Tensor, writer, bar) -> float:
        cfg = self.config
        n = interval["steps"]
        seconds = time.perf_counter() - interval["t0"]
        row: dict[str, Any] = {
            "step": step,
            "train/loss": float(interval["loss"]) / n,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": float(interval["grad_norm"]) / n,
            "train/samples_per_s": n * cfg.batch_size * cfg.grad_accum_steps / max(seconds, 1e-9),
        }
        n_ds = len(self.dataset_names)
        names = [f"loss_dataset/{i}_{name}" for i, name in enumerate(self.dataset_names)] if n_ds > 1 else []
        names += [f"loss_task/{task[:60]}" for task in self.data.tasks]
        columns = range(n_ds, sums.shape[1]) if n_ds == 1 else range(sums.shape[1])
        for name, column in zip(names, columns, strict=True):
            if sums[1, column] > 0:
                row[name] = float(sums[0, column] / sums[1, column])
        self._record(row, writer)
        if bar is not None:
            bar.set_postfix(
                loss=f"{row['train/loss']:.4f}", lr=f"{row['train/lr']:.1e}",
                grad=f"{row['train/grad_norm']:.2f}", sps=f"{row['train/samples_per_s']:.0f}",
            )  # fmt: skip
        return row["train/loss"]

    def _validate(self, step: int, writer) -> float | None:
        """Loss on held-out episodes: a fixed sample of frames with fixed noise, so values compare across steps."""
        val = None
        if self.main:
            cfg = self.config
            val = validation_loss(
                self.policy, self.pre, self.data.val, cfg.batch_size, cfg.val_batches, cfg.seed, cfg.policy.use_amp
            )
            self.policy.train()
            self._record({"step": step, "val/loss": val}, writer)
        self.accelerator.wait_for_everyone()
        return val

    def _save(self, step: int) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.main:
            raw_weights = None

            def write_pretrained(directory: Path) -> None:
                self.policy.save_pretrained(directory, processors=(self.pre, self.post))

            state = {
                "progress": {"micro_batches": step * self.config.grad_accum_steps, "processes": self.world},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": ckpt.rng_state(),
            }
            config = self.config.to_dict()
            if self.ema is None:
                ckpt.save_checkpoint(
                    self.output_dir, step, write_pretrained, config, state, None, self.config.keep_last
                )
            else:
                with self.ema.swapped() as raw_weights:
                    ckpt.save_checkpoint(
                        self.output_dir, step, write_pretrained, config, state, raw_weights, self.config.keep_last
                    )
        acc.wait_for_everyone()


def element_counts(is_pad: torch.Tensor | None, n: int, cfg) -> torch.Tensor:
    """Valid (non-padded) action elements of each of `n` samples: the weights of LeRobot's mean."""
    steps = cfg.chunk_size - is_pad.sum(1).cpu() if is_pad is not None else torch.full((n,), cfg.chunk_size)
    return (steps * cfg.action_dim).float()


def batch_noise(policy, seed: int, index: int, global_batch: int, stream: int, world: int = 1, rank: int = 0):
    """Flow-matching noise and times of global batch `index` of `stream`, this process's slice, on the policy's
    device: a pure function of (seed, stream, index), whatever the process count."""
    cfg = policy.config
    g = torch.Generator().manual_seed(batch_seed(seed, index, stream))
    noise = torch.randn(global_batch, cfg.chunk_size, cfg.max_action_dim, generator=g)
    t = policy.model.sample_time(global_batch, torch.device("cpu"), generator=g)
    local = slice(rank * (global_batch // world), (rank + 1) * (global_batch // world))
    device = next(policy.parameters()).device
    return noise[local].to(device), t[local].to(device)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def validation_loss(policy, pre, data, batch_size: int, max_batches: int, seed: int, use_amp: bool = False) -> float:
    """LeRobot's loss (mean over valid action elements) on a fixed sample of `data` with fixed noise.

    The sample and the noise depend only on `seed`, so the value compares across steps, stages and runs: the
    trainer's validation curve and continual learning's per-task forgetting check use it. Leaves `policy` in eval
    mode.
    """
    g = torch.Generator().manual_seed(batch_seed(seed, 0, VAL_STREAM))
    size = min(len(data), max_batches * batch_size)
    indices = torch.randperm(len(data), generator=g)[:size].tolist()
    loader = DataLoader(data, batch_size=batch_size, sampler=indices)
    device = next(policy.parameters()).device
    policy.eval()
    total, count = 0.0, 0.0
    for k, raw in enumerate(loader):
        counts = element_counts(raw.get("action_is_pad"), len(raw["task"]), policy.config).to(device)
        noise, t = batch_noise(policy, seed, k, len(raw["task"]), VAL_STREAM)
        with autocast(device, use_amp):
            per_sample = policy.compute_loss(pre(raw), noise=noise, time=t, reduction="none")
        total += float((per_sample.float() * counts).sum())
        count += float(counts.sum())
    return total / count


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; returns where everything was written."""
    return Trainer(config).run()


__all__ = ["EMA", "TrainResult", "Trainer", "train", "validation_loss"]
