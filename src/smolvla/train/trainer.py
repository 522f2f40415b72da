"""The training loop: flow-matching imitation on LeRobot datasets, on `accelerate` (1 CPU to many GPUs, unchanged).

One optimizer step = `grad_accum_steps` micro-batches of `batch_size` samples (global, split over processes). The
loss of a micro-batch is LeRobot's mean over its valid action elements taken over the *global* batch (one scalar
all-reduce of the element count), so N processes compute the same gradient as one process with the same batch.
Data order and noise are pure functions of (seed, batch index) (see `smolvla.train.data`), so a run resumed from its
last checkpoint after a SIGKILL reaches bit-identical weights on CPU. A training mode (reflow, distillation) changes
the run only through `TrainHooks`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from smolvla import adapters, hub, streams
from smolvla.data import WeightedDatasetSampler
from smolvla.data.augment import AugmentedSamples
from smolvla.errors import CheckpointError, ConfigError
from smolvla.keys import TASK_KEY
from smolvla.policy import SmolVLAPolicy
from smolvla.train import checkpoint as ckpt
from smolvla.train.build import RunProcessors, build_policy, check_compatible, planned_chunk_size, policy_dir
from smolvla.train.config import TrainConfig, check_resumable
from smolvla.train.data import GlobalBatches, load_train_data
from smolvla.train.ema import EMA
from smolvla.train.hooks import TrainHooks
from smolvla.train.loss import GroupLosses, batch_noise, validation_loss
from smolvla.train.metrics import METRICS_FILE, TENSORBOARD_DIR, Interval, MetricsLog, group_columns
from smolvla.train.optim import Schedule, make_optimizer, make_scheduler
from smolvla.train.precision import autocast
from smolvla.train.selection import SUCCESS, BestCheckpoint, CheckpointEvaluator


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
    best: BestCheckpoint | None = None  # with --eval_freq: the checkpoint with the highest success (checkpoints/best)


class Trainer:
    def __init__(
        self, config: TrainConfig, hooks: TrainHooks | None = None, evaluator: CheckpointEvaluator | None = None
    ):
        config.validate()
        if config.eval_freq and evaluator is None:
            raise ConfigError("--eval_freq needs a simulator to evaluate in: `smolvla train`, or pass evaluator=")
        self.config, self.hooks, self.evaluator = config, hooks or TrainHooks(), evaluator
        self.output_dir = Path(config.output_dir)
        device = config.policy.device
        if device not in (None, "cpu", "cuda"):
            raise ConfigError(f"--policy.device must be cpu or cuda (accelerate places each process), got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--policy.device=cuda but CUDA is not available")
        self.accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        if config.batch_size % self.world:
            raise ConfigError(f"--batch_size={config.batch_size} must be divisible by the {self.world} processes")
        if not config.resume and ckpt.has_checkpoints(self.output_dir):
            raise ConfigError(
                f"{self.output_dir} already holds checkpoints: pass --resume=true to continue that run, or choose "
                "another --output_dir"
            )
        if self.main:
            ckpt.remove_partial(self.output_dir)
        torch.manual_seed(config.seed)
        self._setup()

    def _setup(self) -> None:
        """Policy, processors, data, optimizer: fresh, or exactly as the last checkpoint left them."""
        cfg, device = self.config, str(self.accelerator.device)
        self.start_step, state, self.resumed_from = 0, None, None
        self.adapter = None  # peft's wrapper around the policy, when training adapters
        if cfg.resume:
            self.resumed_from = ckpt.last_checkpoint(self.output_dir)
            check_resumable(ckpt.read_train_config(self.resumed_from), cfg, self.resumed_from)
            state = ckpt.load_training_state(self.resumed_from)
            self.start_step = int(state["progress"]["step"])
            saved = self.resumed_from / ckpt.PRETRAINED_MODEL
            if cfg.peft.enabled:  # the base again, then the checkpoint's adapter (kept apart when saved merged)
                self.data = load_train_data(cfg.dataset, planned_chunk_size(cfg.policy), cfg.seed, cfg.rename_map)
                policy = build_policy(cfg.policy, self.data)
                where = saved / adapters.ADAPTER_SUBDIR if cfg.peft.merge else saved
                self.adapter = adapters.load_adapter(policy, where, trainable=True)
            else:
                policy = SmolVLAPolicy.from_pretrained(saved)
                self.data = load_train_data(cfg.dataset, policy.config.chunk_size, cfg.seed, cfg.rename_map)
                check_compatible(policy, self.data.features, self.data.fill_missing_cameras)
            self.processors = RunProcessors.load(saved, device)
        else:
            args = self.hooks.policy_args(cfg.policy)
            self.data = load_train_data(cfg.dataset, planned_chunk_size(args), cfg.seed, cfg.rename_map)
            policy = build_policy(args, self.data)
            self.processors = self.hooks.init_policy(policy, args, self.data, device)
            if cfg.peft.enabled:
                base = args.path if hub.is_repo_id(args.path) else str(policy_dir(args.path))  # as LeRobot finds it
                self.adapter = adapters.add_adapter(policy, cfg.peft.spec(), base=base)
        self.pre = self.processors.train
        self.policy = policy.to(self.accelerator.device)
        self.hooks.attach(self.policy, cfg)
        trainable = {n: p for n, p in self.policy.named_parameters() if p.requires_grad}
        self.ema = EMA(trainable, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.optimizer = make_optimizer(self.policy)
        self.scheduler = make_scheduler(self.optimizer, Schedule.for_run(self.policy.config, cfg.steps))
        if state is not None:
            ckpt.restore_training_state(state, self.optimizer, self.scheduler, self.ema, self.resumed_from)
        if self.policy.config.compile_model:
            # The loss is a method, not forward(): compile it (an instance attribute, so weights keep their names).
            model = self.policy.model
            model.losses = torch.compile(model.losses, mode=self.policy.config.compile_mode)
        self.model, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        self.dataset_names = [Path(r).name for r in cfg.dataset.root]
        self.best = BestCheckpoint.load(ckpt.checkpoints_dir(self.output_dir)) if cfg.resume else BestCheckpoint()
        if self.evaluator is not None and self.main:
            self.evaluator.check(self.policy)  # e.g. cameras the simulator lacks: now, not after the first hour

    def _loader(self, start_batch: int, stop_batch: int) -> DataLoader:
        cfg, train = self.config, self.data.train
        weights = list(cfg.dataset.weights) or [float(s) for s in train.sizes]
        sampler = WeightedDatasetSampler(train.sizes, weights, seed=cfg.seed)
        augment = cfg.dataset.image_transforms
        batches = GlobalBatches(
            sampler, cfg.batch_size, self.rank, self.world, start_batch, stop_batch, positions=augment.enable
        )
        samples = AugmentedSamples(train, augment, cfg.seed) if augment.enable else train
        return DataLoader(samples, batch_sampler=batches, num_workers=cfg.num_workers)

    def _micro_batch(self, raw, index: int, sync: bool, interval: Interval, groups: GroupLosses) -> None:
        """Forward and backward of one micro-batch; its loss is scaled to the global batch and the accumulation."""
        cfg, acc = self.config, self.accelerator
        batch = self.pre(raw)
        noise, t = batch_noise(self.policy, cfg.seed, index, cfg.batch_size, streams.TRAIN, self.world, self.rank)
        batch, noise, t = self.hooks.targets(raw, batch, noise, t, index)
        with contextlib.nullcontext() if sync else acc.no_sync(self.model), autocast(acc.device, cfg.policy.use_amp):
            sums, counts = self.model(batch, noise=noise, time=t, reduction="sum_count")
            local_sum = sums.float().sum()
            totals = acc.reduce(torch.stack([local_sum.detach(), counts.sum()]), reduction="sum")
            acc.backward(local_sum * self.world / totals[1] / cfg.grad_accum_steps)
        interval.loss += (totals[0] / totals[1]).detach() / cfg.grad_accum_steps
        groups.add(sums.detach() / counts.clamp(min=1), raw["dataset_index"], raw[TASK_KEY])

    def run(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        step, accum = self.start_step, cfg.grad_accum_steps
        log = MetricsLog(self.output_dir, step, cfg.steps, cfg.resume, cfg.progress) if self.main else None
        batches = iter(self._loader(step * accum, cfg.steps * accum))
        groups = GroupLosses(len(self.data.train.datasets), self.data.tasks, acc.device)
        interval = Interval(acc.device)
        last_loss, val_loss = None, None
        self.model.train()
        if self._eval_step(step) and step not in self.best.evaluated:  # killed between its save and its evaluation
            self._evaluate(step, None, log)
        while step < cfg.steps:
            for micro in range(accum):
                self._micro_batch(next(batches), step * accum + micro, micro == accum - 1, interval, groups)
            grad_norm = acc.clip_grad_norm_(self.policy.parameters(), self.policy.config.optimizer_grad_clip_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update()
            step += 1
            interval.grad_norm += grad_norm.detach()
            interval.steps += 1
            if log is not None:
                log.step()
            if step % cfg.log_freq == 0 or step == cfg.steps:
                last_loss = self._log(step, interval, acc.reduce(groups.sums, reduction="sum"), log)
                groups.sums.zero_()
                interval = Interval(acc.device)
            evaluate = self._eval_step(step)
            val_step = cfg.val_freq > 0 and (step % cfg.val_freq == 0 or step == cfg.steps)
            if self.data.val is not None and (val_step or evaluate):
                val_loss = self._validate(step, log)
            if (cfg.save_checkpoint and (step % cfg.save_freq == 0 or step == cfg.steps)) or evaluate:
                self._save(step)
            if evaluate:
                self._evaluate(step, val_loss, log)
        if log is not None:
            log.close()
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
            best=self.best if self.best.step is not None else None,
        )

    def _eval_step(self, step: int) -> bool:
        every = self.config.eval_freq
        return every > 0 and step > 0 and (step % every == 0 or step == self.config.steps)

    def _evaluate(self, step: int, val_loss: float | None, log: MetricsLog | None) -> None:
        """Closed-loop metrics of checkpoint `step` (already saved), logged; `checkpoints/best` follows success."""
        if self.main:
            pretrained = ckpt.checkpoints_dir(self.output_dir) / ckpt.step_name(step) / ckpt.PRETRAINED_MODEL
            with torch.random.fork_rng(devices=[]):  # rollouts reseed torch: the run's own draws stay as saved
                metrics = self.evaluator(pretrained, step)
            log.record({"step": step, **metrics})
            self.best.offer(ckpt.checkpoints_dir(self.output_dir), step, metrics[SUCCESS], val_loss)
        self.accelerator.wait_for_everyone()

    def _log(self, step: int, interval: Interval, sums: torch.Tensor, log: MetricsLog | None) -> float:
        cfg = self.config
        n = interval.steps
        seconds = time.perf_counter() - interval.started
        row = {
            "step": step,
            "train/loss": float(interval.loss) / n,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": float(interval.grad_norm) / n,
            "train/samples_per_s": n * cfg.batch_size * cfg.grad_accum_steps / max(seconds, 1e-9),
            **group_columns(self.dataset_names, self.data.tasks, sums),
        }
        if log is not None:
            log.record(row)
            log.show(row)
        return row["train/loss"]

    def _validate(self, step: int, log: MetricsLog | None) -> float | None:
        """Loss on held-out episodes: a fixed sample of frames with fixed noise, so values compare across steps."""
        val = None
        if self.main:
            cfg = self.config
            val = validation_loss(
                self.policy, self.pre, self.data.val, cfg.batch_size, cfg.val_batches, cfg.seed, cfg.policy.use_amp
            )
            self.policy.train()
            log.record({"step": step, "val/loss": val})
        self.accelerator.wait_for_everyone()
        return val

    def _save(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.main:
            state = {
                "progress": {"micro_batches": step * self.config.grad_accum_steps, "processes": self.world},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": ckpt.rng_state(),
            }

            def write_pretrained(directory: Path) -> None:
                if self.adapter is None:
                    self.policy.save_pretrained(directory, processors=self.processors.saved)
                else:
                    adapters.save_adapted(self.adapter, directory, self.processors.saved, bool(self.config.peft.merge))

            cfg = self.config
            try:
                with self.ema.swapped() if self.ema is not None else contextlib.nullcontext() as raw_weights:
                    ckpt.save_checkpoint(
                        self.output_dir,
                        step,
                        write_pretrained,
                        cfg.to_dict(),
                        state,
                        raw_weights,
                        cfg.keep_last,
                        self.best.protected(),
                    )
            except OSError as e:  # disk full, quota, permissions: the half-written step was removed
                kept = ckpt.checkpoints_dir(self.output_dir) / ckpt.LAST
                what = f"{kept} still points to the last complete checkpoint" if kept.exists() else "none was kept"
                raise CheckpointError(
                    f"cannot write checkpoint {ckpt.step_name(step)} in {ckpt.checkpoints_dir(self.output_dir)}: "
                    f"{e.strerror or e}; {what} (resume from it with --resume=true once there is room)"
                ) from e
        self.accelerator.wait_for_everyone()


def train(
    config: TrainConfig, hooks: TrainHooks | None = None, evaluator: CheckpointEvaluator | None = None
) -> TrainResult:
    """Run (or resume) training as configured; `hooks` select a training mode (default: imitation), `evaluator`
    scores checkpoints closed-loop (`--eval_freq`)."""
    return Trainer(config, hooks, evaluator).run()


__all__ = ["TrainResult", "Trainer", "train"]
