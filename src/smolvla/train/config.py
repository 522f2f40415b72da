"""`smolvla train` settings: LeRobot's flag names where the concept is the same (`--policy.path`, `--dataset.root`,
`--batch_size`, `--steps`, `--output_dir`, `--resume`, `--config_path`, `--log_freq`, `--save_freq`, `--seed`).

A YAML or JSON file given by `--config_path` is applied first, then the other flags. `--resume=true` rebuilds the
run from the checkpoint's own `train_config.json`; flags may then change only how long and how chattily it runs
(`RESUMABLE`): anything that would change the run's result is an error rather than a silently different run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smolvla import hub
from smolvla.adapters import AdapterSpec
from smolvla.data.augment import ImageTransformsConfig
from smolvla.errors import ConfigError
from smolvla.flags import apply_flags, apply_mapping, load_config_file, to_mapping
from smolvla.model.presets import PRESETS
from smolvla.train.checkpoint import last_checkpoint, read_train_config

MAPPING_SETTINGS = ("rename_map",)
# Settings that may differ between a run and its resumption (everything else must match the checkpoint): a
# top-level name covers its whole group.
RESUMABLE = frozenset(
    {"steps", "log_freq", "save_freq", "val_freq", "keep_last", "num_workers", "progress", "resume", "config_path",
     "dataset.verify", "eval_freq", "env", "eval"}
)  # fmt: skip


@dataclass
class DatasetArgs:
    root: tuple[str, ...] = ()  # local LeRobot dataset directories (comma-separated for several)
    repo_id: tuple[str, ...] = ()  # Hugging Face dataset ids, from the cache (or downloaded); --dataset.root wins
    weights: tuple[float, ...] = ()  # sampling proportion per dataset; empty = proportional to their frames
    val_fraction: float = 0.1  # share of each dataset's episodes held out for the validation loss
    cache_frames: bool = False  # decode all camera frames into RAM once (small datasets: much faster epochs)
    # share of each dataset's training episodes used (1 = all; chosen by seed): bounded replay buffers
    episode_fraction: tuple[float, ...] = ()
    stats_path: str | None = None  # normalize with these statistics (stats.json format) instead of the datasets'
    verify: bool = True  # cross-check metadata, data files and videos when opening (smolvla check-dataset)
    episodes: tuple[int, ...] = ()  # only these episodes of the (one) dataset, LeRobot's `--dataset.episodes=[0,1]`
    # robot name per dataset (datasets of one name share processors and statistics); empty = grouped by features
    embodiment: tuple[str, ...] = ()
    # cameras a --policy.path checkpoint expects and the data lacks become black images nothing attends to, in
    # training and in the saved preprocessor; off, a missing camera is an error naming the rename_map that would fix it
    fill_missing_cameras: bool = False
    # LeRobot's augmentation of training images (`--dataset.image_transforms.enable=true`), never at validation/eval
    image_transforms: ImageTransformsConfig = field(default_factory=ImageTransformsConfig)


@dataclass
class PolicyArgs:
    """Where the policy comes from, plus SmolVLA config fields to override (None keeps the preset's/checkpoint's)."""

    path: str | None = None  # a pretrained_model directory to fine-tune; none = train `preset` from scratch
    preset: str = "tiny"  # architecture for training from scratch: tiny | smolvla_base
    tokenizer: str | None = None  # directory with tokenizer.json; default: the checkpoint's, or learnt from tasks
    device: str | None = None  # cpu | cuda | cuda:1 ...; none = cuda when available
    use_amp: bool = False  # bf16 autocast for forward and backward
    # SmolVLA config fields (LeRobot names); architecture fields only apply when training from scratch.
    compile_model: bool | None = None  # torch.compile the flow-matching loss
    compile_mode: str | None = None  # torch.compile mode (LeRobot's default: max-autotune)
    chunk_size: int | None = None
    n_action_steps: int | None = None
    num_steps: int | None = None
    image_size: int | None = None  # square side the cameras are resized (with padding) to
    num_vlm_layers: int | None = None
    freeze_vision_encoder: bool | None = None
    train_expert_only: bool | None = None
    train_state_proj: bool | None = None
    optimizer_lr: float | None = None
    optimizer_weight_decay: float | None = None
    optimizer_grad_clip_norm: float | None = None
    scheduler_warmup_steps: int | None = None
    scheduler_decay_steps: int | None = None
    scheduler_decay_lr: float | None = None
    # training-time real-time chunking: up to this many leading chunk steps given per sample (0 = off)
    rtc_training_max_delay: int | None = None

    ARCHITECTURE = ("image_size", "num_vlm_layers")

    def overrides(self) -> dict[str, Any]:
        """The SmolVLA config fields set on the command line, in SmolVLAConfig's names (a training mode's own
        settings, in a subclass of this block, are not config fields)."""
        own = {"path", "preset", "tokenizer", "device", "use_amp"}
        out = {}
        for f in dataclasses.fields(PolicyArgs):
            value = getattr(self, f.name)
            if f.name in own or value is None:
                continue
            if f.name == "image_size":
                out["resize_imgs_with_padding"] = (value, value)
            else:
                out[f.name] = value
        return out


@dataclass
class PeftArgs:
    """LeRobot's `--peft.*`: any of them set fine-tunes the `--policy.path` checkpoint through adapters (LoRA; the
    defaults adapt the expert's q/v and the projections around it, `smolvla.adapters.DEFAULT_TARGETS`). Adapters
    usually want ~10x the full fine-tune's --policy.optimizer_lr."""

    method_type: str | None = None  # LORA
    r: int | None = None  # rank (16)
    lora_alpha: int | None = None  # scaling = lora_alpha / r (peft's default alpha: 8)
    lora_dropout: float | None = None
    target_modules: str | None = None  # a regex over module names, or comma-separated name suffixes
    full_training_modules: tuple[str, ...] = ()  # trained in full beside the adapters (peft's modules_to_save)
    init_type: str | None = None  # peft's init_lora_weights
    merge: bool | None = None  # save the adapters merged into plain weights (LeRobot layout; adapter kept for resume)

    @property
    def enabled(self) -> bool:
        return any(v not in (None, ()) for v in dataclasses.asdict(self).values())

    def spec(self) -> AdapterSpec:
        given = {k: v for k, v in dataclasses.asdict(self).items() if k != "merge" and v not in (None, ())}
        spec = AdapterSpec(**given)
        spec.validate()
        return spec


@dataclass
class EnvArgs:
    """The simulator tasks `--eval_freq` evaluates on (LeRobot's `--env.task`); cameras and image size are the
    policy's."""

    task: str | None = None  # Meta-World tasks or groups, comma-separated (e.g. drawer-close,door-open or mt10)
    max_steps: int | None = None  # episode step cap; none = Meta-World's 500


@dataclass
class EvalArgs:
    n_episodes: int = 10  # per task, on starts disjoint from the demonstrations' (eval seeds)
    num_workers: int = 1  # simulator processes
    seed: int = 1000


@dataclass
class TrainConfig:
    dataset: DatasetArgs = field(default_factory=DatasetArgs)
    policy: PolicyArgs = field(default_factory=PolicyArgs)
    output_dir: str = "outputs/train"
    batch_size: int = 8  # global batch per optimizer step (split over processes, times grad_accum_steps)
    grad_accum_steps: int = 1  # micro-batches per optimizer step: batch_size × grad_accum_steps samples per update
    steps: int = 1000  # optimizer steps
    seed: int = 1000
    num_workers: int = 2  # data-loading processes per training process
    log_freq: int = 50
    save_freq: int = 1000
    save_checkpoint: bool = True
    keep_last: int = 3  # checkpoints kept (0 = all); the newest is always `checkpoints/last`
    val_freq: int = 500  # validation loss on held-out episodes every N steps (0 = never)
    val_batches: int = 8
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights and save it as the policy
    progress: bool = True  # tqdm progress bar
    resume: bool = False
    config_path: str | None = None  # YAML/JSON settings applied before the other flags
    # Dataset key → policy key, LeRobot's JSON form ('{"observation.images.top": "observation.images.camera1"}'):
    # the policy is built (or checked) with the new names, and the saved preprocessor renames the robot's own.
    rename_map: dict[str, str] = field(default_factory=dict)
    peft: PeftArgs = field(default_factory=PeftArgs)
    # closed-loop success every N steps (0 = never) on --env.task: logged as eval/*, `checkpoints/best` follows it
    eval_freq: int = 0
    env: EnvArgs = field(default_factory=EnvArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)

    def validate(self) -> None:
        if not self.dataset.root and self.dataset.repo_id:
            try:
                self.dataset.root = tuple(str(hub.resolve(r, repo_type="dataset")) for r in self.dataset.repo_id)
            except hub.HubError as e:
                raise ConfigError(f"--dataset.repo_id: {e}") from e
        if not self.dataset.root:
            raise ConfigError("no dataset: set --dataset.root=<local LeRobot dataset> or --dataset.repo_id=<org/name>")
        self.resolve_paths()
        if not 0.0 <= self.dataset.val_fraction < 1.0:
            raise ConfigError(f"--dataset.val_fraction must be in [0, 1), got {self.dataset.val_fraction}")
        weights = self.dataset.weights
        if weights and (any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0):
            raise ConfigError(f"--dataset.weights must be finite, >= 0 and not all 0, got {list(weights)}")
        if self.dataset.weights and len(self.dataset.weights) != len(self.dataset.root):
            raise ConfigError(
                f"--dataset.weights has {len(self.dataset.weights)} values for {len(self.dataset.root)} datasets"
            )
        if self.dataset.episodes and len(self.dataset.root) > 1:
            raise ConfigError("--dataset.episodes selects episodes of one dataset; several are given")
        if any(e < 0 for e in self.dataset.episodes):
            raise ConfigError(f"--dataset.episodes must be episode indices >= 0, got {list(self.dataset.episodes)}")
        if self.dataset.episode_fraction:
            if len(self.dataset.episode_fraction) != len(self.dataset.root):
                raise ConfigError(
                    f"--dataset.episode_fraction has {len(self.dataset.episode_fraction)} values for "
                    f"{len(self.dataset.root)} datasets"
                )
            bad = [f for f in self.dataset.episode_fraction if not 0.0 < f <= 1.0]
            if bad:
                raise ConfigError(f"--dataset.episode_fraction values must be in (0, 1], got {bad}")
        positive = {"batch_size": self.batch_size, "steps": self.steps, "grad_accum_steps": self.grad_accum_steps}
        positive.update(log_freq=self.log_freq, save_freq=self.save_freq, val_batches=self.val_batches)
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {value}")
        for name, value in {"num_workers": self.num_workers, "keep_last": self.keep_last}.items():
            if value < 0:
                raise ConfigError(f"--{name} must be >= 0, got {value}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        self.dataset.image_transforms.validate()
        if self.eval_freq < 0:
            raise ConfigError(f"--eval_freq must be >= 0, got {self.eval_freq}")
        if self.eval_freq and not self.env.task:
            raise ConfigError("--eval_freq needs the tasks to evaluate on: --env.task=<Meta-World tasks>")
        if self.eval.n_episodes < 1 or self.eval.num_workers < 1:
            raise ConfigError(
                f"--eval.n_episodes and --eval.num_workers must be >= 1, got {self.eval.n_episodes}, "
                f"{self.eval.num_workers}"
            )
        if self.peft.enabled:
            self.peft.spec()
            if self.policy.path is None:
                raise ConfigError(
                    "--peft.* adapts a trained policy: give it with --policy.path (adapters on a policy trained from "
                    "scratch learn almost nothing)"
                )
        if self.policy.preset not in PRESETS and self.policy.path is None:
            raise ConfigError(f"--policy.preset must be one of {sorted(PRESETS)}, got {self.policy.preset!r}")

    def resolve_paths(self) -> None:
        """Make every path absolute: the saved run then resumes from any working directory, and one dataset given
        relatively or absolutely is the same setting."""
        d, p = self.dataset, self.policy
        d.root = tuple(absolute(r) for r in d.root)
        d.stats_path, p.path, p.tokenizer = absolute(d.stats_path), absolute(p.path), absolute(p.tokenizer)

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    @classmethod
    def layered(cls, argv: list[str]):
        """Defaults ← `--config_path` file ← flags (not validated: the caller still applies its own rules)."""
        config = apply_flags(cls(), argv)
        if config.config_path:
            config = apply_flags(apply_mapping(cls(), load_config_file(config.config_path)), argv)
        return config

    @classmethod
    def from_flags(cls, argv: list[str]) -> TrainConfig:
        """Defaults ← `--config_path` file ← flags; with `--resume=true`, the checkpoint's config ← allowed flags."""
        config = cls.layered(argv)
        if config.resume:
            config = _resumed(config, argv)
        config.validate()
        return config


def _resumed(config: TrainConfig, argv: list[str]) -> TrainConfig:
    checkpoint = last_checkpoint(Path(config.output_dir))
    saved = read_train_config(checkpoint)
    resumed = apply_mapping(type(config)(), saved)
    apply_flags(resumed, argv)
    if config.config_path:  # a config file given with --resume counts like flags
        apply_mapping(resumed, load_config_file(config.config_path))
        apply_flags(resumed, argv)
    resumed.resume, resumed.output_dir = True, config.output_dir
    return resumed


def absolute(path: str | None) -> str | None:
    """`path` made absolute against the working directory, symlinks kept (`checkpoints/last` stays `last`); a
    Hugging Face repo id (`org/name`, not a local path) stays an id."""
    if path is None or hub.is_repo_id(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def check_resumable(saved: dict[str, Any], config: TrainConfig, checkpoint: Path) -> None:
    """Resuming may change only `RESUMABLE` settings; anything else would silently make a different run."""
    try:  # a run saved before paths were stored absolute: read its relative paths from here, as it did
        past = apply_mapping(type(config)(), saved)
        past.resolve_paths()
        saved = past.to_dict()
    except ConfigError:
        pass
    before, after = _flat(saved), _flat(config.to_dict())
    fixed = [k for k in after if k not in RESUMABLE and k.split(".")[0] not in RESUMABLE and k != "output_dir"]
    changed = [k for k in fixed if before.get(k) != after[k]]
    if changed:
        detail = "; ".join(f"{k}: checkpoint {before.get(k)!r}, now {after[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume {checkpoint} with different settings ({detail}); only {sorted(RESUMABLE)} may change. "
            "Start a new --output_dir to train with other settings (or fine-tune with --policy.path)."
        )


def _flat(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted settings; a mapping-valued setting (`rename_map`) is one value, compared whole."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and key not in MAPPING_SETTINGS:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out
