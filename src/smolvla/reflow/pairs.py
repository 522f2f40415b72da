"""The reflow pair cache: the teacher's (X0, X1) for every training frame, solved once and stored.

Online reflow pays `reflow_num_inference_steps` teacher passes per training batch; with a cache k-RF training costs
what ordinary training costs. Layout of a cache directory (written atomically):

    pairs.safetensors  keys (N, 2) int64 = (dataset_index, frame index), noise and actions (N, P, chunk, D) float32
    pairs.json         how it was made: teacher path and weights sha256, ODE steps, seed, dataset roots and split

P noise draws per frame (`pairs_per_frame`); training picks one per sample from a hash of (seed, batch, frame), so
a run is reproducible and independent of the process count. Noise and actions keep all `max_action_dim` columns:
the teacher saw the padded columns of X0, so the pair is exactly what it solved.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader

from smolvla import streams
from smolvla.atomic import atomic_directory
from smolvla.errors import CheckpointError, ConfigError
from smolvla.keys import TASK_KEY
from smolvla.model.checkpoint import weights_sha256
from smolvla.model.config import SmolVLAConfig
from smolvla.reflow.teacher import load_teacher, solve, teacher_dir
from smolvla.train.config import DatasetArgs
from smolvla.train.data import load_train_data
from smolvla.train.precision import autocast

PAIRS_FILE = "pairs.safetensors"
META_FILE = "pairs.json"


def _dataset_signature(dataset: DatasetArgs) -> dict[str, Any]:
    return {
        "root": [str(Path(r).resolve()) for r in dataset.root],
        "val_fraction": dataset.val_fraction,
        "episode_fraction": list(dataset.episode_fraction),
    }


@dataclass
class PairCache:
    keys: Tensor  # (N, 2) int64: dataset_index, frame index
    noise: Tensor  # (N, P, chunk, max_action_dim) X0
    actions: Tensor  # (N, P, chunk, max_action_dim) X1
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        n = self.keys.shape[0]
        if self.keys.shape != (n, 2) or self.noise.shape != self.actions.shape or self.noise.shape[0] != n:
            raise CheckpointError(
                f"pair cache tensors disagree: keys {tuple(self.keys.shape)}, noise {tuple(self.noise.shape)}, "
                f"actions {tuple(self.actions.shape)}"
            )
        # Dense (dataset, frame) → row table: a batch is looked up with one gather.
        self.rows = torch.full((int(self.keys[:, 0].max()) + 1, int(self.keys[:, 1].max()) + 1), -1)
        self.rows[self.keys[:, 0], self.keys[:, 1]] = torch.arange(n)

    @property
    def pairs_per_frame(self) -> int:
        return self.noise.shape[1]

    # --- storage ---
    def save(self, path: str | Path) -> Path:
        def write(tmp: Path) -> None:
            tensors = {"keys": self.keys, "noise": self.noise, "actions": self.actions}
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / PAIRS_FILE))
            (tmp / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")

        atomic_directory(Path(path), write)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PairCache:
        path = Path(path)
        if not (path / PAIRS_FILE).is_file() or not (path / META_FILE).is_file():
            raise ConfigError(f"{path} is not a reflow pair cache: it needs {PAIRS_FILE} and {META_FILE}")
        try:
            meta = json.loads((path / META_FILE).read_text())
            tensors = load_file(str(path / PAIRS_FILE))
            return cls(tensors["keys"].long(), tensors["noise"], tensors["actions"], meta)
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot read the pair cache {path}: {e}") from e

    # --- use ---
    def check(self, teacher: Path, dataset: DatasetArgs, seed: int, num_steps: int, student: SmolVLAConfig) -> None:
        """The cache must come from this teacher, ODE step count, dataset split and chunk shape."""
        want = {
            "teacher_sha256": weights_sha256(teacher),
            "num_inference_steps": num_steps,
            "seed": seed,
            "dataset": _dataset_signature(dataset),
            "chunk_size": student.chunk_size,
            "max_action_dim": student.max_action_dim,
        }
        changed = [k for k, v in want.items() if self.meta.get(k) != v]
        if changed:
            detail = "; ".join(f"{k}: cache {self.meta.get(k)!r}, run {want[k]!r}" for k in changed)
            raise ConfigError(
                f"the pair cache was made for another run ({detail}); regenerate it for teacher {teacher}"
            )

    def lookup(self, dataset_index: Tensor, frame_index: Tensor, seed: int, batch_index: int) -> tuple[Tensor, Tensor]:
        """(X0, X1) of each sample (B, chunk, max_action_dim); one of the P draws, chosen reproducibly."""
        ds, frames = dataset_index.long().cpu(), frame_index.long().cpu()
        inside = (ds < self.rows.shape[0]) & (frames < self.rows.shape[1])
        rows = torch.full_like(frames, -1)
        rows[inside] = self.rows[ds[inside], frames[inside]]
        if (rows < 0).any():
            bad = int((rows < 0).nonzero()[0, 0])
            raise ConfigError(
                f"frame {int(frames[bad])} of dataset {int(ds[bad])} is not in the pair cache: it was generated "
                "for another dataset or split"
            )
        draw = torch.from_numpy(_draws(rows.numpy(), seed, batch_index, self.pairs_per_frame))
        return self.noise[rows, draw], self.actions[rows, draw]


def _draws(rows: np.ndarray, seed: int, batch_index: int, count: int) -> np.ndarray:
    """Which of `count` noise draws each row uses in batch `batch_index`: a splitmix64 hash, wrap-around intended."""
    if count == 1:
        return np.zeros(len(rows), dtype=np.int64)
    with np.errstate(over="ignore"):
        offset = np.uint64(streams.batch_seed(seed, batch_index, streams.PAIR_DRAW))
        z = rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + offset
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z % np.uint64(count)).astype(np.int64)


def generate_pairs(
    teacher_path: str,
    dataset: DatasetArgs,
    output: str | Path,
    *,
    seed: int,
    num_steps: int = 10,
    pairs_per_frame: int = 1,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    use_amp: bool = False,
) -> PairCache:
    """Solve the teacher once from `pairs_per_frame` noise draws for every training frame (the trainer's own
    split of `dataset` for `seed`) and save the cache to `output`."""
    if pairs_per_frame < 1:
        raise ConfigError(f"pairs_per_frame must be >= 1, got {pairs_per_frame}")
    started = time.perf_counter()
    directory = teacher_dir(teacher_path)
    teacher, pre, _ = load_teacher(str(directory), device)
    cfg = teacher.config
    data = load_train_data(dataset, cfg.chunk_size, seed)
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    keys, noises, actions = [], [], []
    for k, raw in enumerate(loader):
        n = len(raw[TASK_KEY])
        seeds = [streams.batch_seed(seed, k * pairs_per_frame + j, streams.PAIR_NOISE) for j in range(pairs_per_frame)]
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        draws = [torch.randn(n, cfg.chunk_size, cfg.max_action_dim, generator=g) for g in generators]
        with autocast(torch.device(device), use_amp):
            solved = solve(teacher, pre(raw), draws, num_steps)
        keys.append(torch.stack([raw["dataset_index"].long(), raw["index"].long()], dim=1))
        noises.append(torch.stack(draws, dim=1))
        actions.append(torch.stack([x.float().cpu() for x in solved], dim=1))
    meta = {
        "teacher": str(directory.resolve()),
        "teacher_sha256": weights_sha256(directory),
        "num_inference_steps": num_steps,
        "seed": seed,
        "dataset": _dataset_signature(dataset),
        "chunk_size": cfg.chunk_size,
        "max_action_dim": cfg.max_action_dim,
        "pairs_per_frame": pairs_per_frame,
        "batch_size": batch_size,
        "frames": int(sum(len(k) for k in keys)),
        "seconds": round(time.perf_counter() - started, 2),
    }
    cache = PairCache(torch.cat(keys), torch.cat(noises), torch.cat(actions), meta)
    cache.save(output)
    return cache
