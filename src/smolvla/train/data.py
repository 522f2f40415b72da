"""Training data: datasets split by episode, and one reproducible stream of global batches.

Reproducibility is by construction rather than by saved iterator state: global batch k is positions
[k·B, (k+1)·B) of an endless stream of epochs (each epoch an order from `WeightedDatasetSampler(seed, epoch)`), and
its flow-matching noise and times come from a generator seeded by (seed, k) (`smolvla.train.loss`). Every process
draws the whole global batch and keeps its slice, so a run resumed at step s, or run on a different number of
processes, sees the very same samples and noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from smolvla.data import LeRobotDataset, MultiLeRobotDataset, WeightedDatasetSampler, load_meta, split_episodes
from smolvla.data.dataset import chunk_delta_timestamps
from smolvla.data.meta import DatasetError, read_stats
from smolvla.data.verify import verify_dataset
from smolvla.train.config import DatasetArgs
from smolvla.train.embodiment import Embodiment, PaddedSamples, group_embodiments, widest_features


@dataclass
class TrainData:
    train: MultiLeRobotDataset | PaddedSamples
    val: MultiLeRobotDataset | PaddedSamples | None
    tasks: list[str]  # every task string of every dataset, in a fixed order (per-task loss ids)
    embodiments: list[Embodiment]  # one robot (features, statistics under the policy's names) per group of datasets
    rename_map: dict[str, str]  # dataset key → policy key; the items keep the dataset's keys (the processors rename)
    fill_missing_cameras: bool = False  # cameras the policy expects and the data lacks: masked black images

    @property
    def mixed(self) -> bool:
        """Several robots: samples are padded to the policy's widths, each embodiment has its own processors."""
        return len(self.embodiments) > 1

    @property
    def features(self) -> dict:
        """The LeRobot features the policy is built on (the one robot's; with several, the widest and all cameras)."""
        return widest_features(self.embodiments)

    @property
    def stats(self) -> dict:
        """Normalization statistics of a one-robot run, merged over its datasets."""
        return self.embodiments[0].stats


def load_train_data(
    args: DatasetArgs, chunk_size: int, seed: int, rename_map: dict[str, str] | None = None
) -> TrainData:
    """Open every dataset (`episodes` of it, if set), hold out `val_fraction` of each one's episodes (then keep
    `episode_fraction` of the rest), group the datasets into embodiments and merge each one's statistics (or read
    the fixed ones of `stats_path`); features and statistics under the names `rename_map` gives them."""
    train, val, metas, stats, tasks = [], [], [], [], []
    fractions = args.episode_fraction or (1.0,) * len(args.root)
    for root, fraction in zip(args.root, fractions, strict=True):
        meta = load_meta(root)
        if args.verify:  # before any training step: a broken dataset is one error here, not a crash mid-run
            verify_dataset(meta)
        if len(meta.episode_index) == 0 or int(meta.length.sum()) == 0:
            raise DatasetError(f"dataset {root} has no frames to train on")
        if meta.stats is None and not args.stats_path:
            raise DatasetError(f"dataset {root} has no meta/stats.json: normalization statistics are required")
        delta = chunk_delta_timestamps(chunk_size, meta.fps)
        episodes = selected_episodes(meta.episode_index.tolist(), args.episodes, root)
        train_eps, val_eps = split_episodes(episodes, args.val_fraction, seed)
        train_eps = episode_subset(train_eps, fraction, seed)
        train.append(LeRobotDataset(root, train_eps, delta, cache_frames=args.cache_frames))
        if val_eps:
            val.append(LeRobotDataset(root, val_eps, delta, cache_frames=args.cache_frames))
        metas.append(meta)
        stats.append(meta.stats)
        tasks += [t for t in meta.tasks if t not in tasks]
    rename_map = dict(rename_map or {})
    renames = [{k: v for k, v in rename_map.items() if k in m.features} for m in metas]
    if len(metas) == 1:
        renames = [rename_map]  # every entry must apply to the one dataset (`renamed` names what does not)
    unused = [k for k in rename_map if not any(k in r for r in renames)]
    if unused:
        raise DatasetError(f"--rename_map renames {unused}, which none of the datasets {list(args.root)} has")
    features = [renamed(m.features, r, f"dataset {m.root}") for m, r in zip(metas, renames, strict=True)]
    if args.stats_path:  # fixed statistics replace the datasets' (set below, once the robots are known)
        stats = [None] * len(metas)
    stats = [s and {r.get(k, k): v for k, v in s.items()} for s, r in zip(stats, renames, strict=True)]
    embodiments = group_embodiments(metas, features, renames, stats, args.embodiment)
    if args.stats_path:
        if len(embodiments) > 1:  # one set of statistics cannot normalize two robots
            raise DatasetError("--dataset.stats_path gives one set of statistics, but the datasets are several robots")
        embodiments[0].stats = {rename_map.get(k, k): v for k, v in read_stats(args.stats_path).items()}
    mixed = len(embodiments) > 1
    train_set = MultiLeRobotDataset(train, same_features=not mixed)
    val_set = MultiLeRobotDataset(val, same_features=not mixed) if val else None
    if mixed:
        features = widest_features(embodiments)
        train_set = PaddedSamples(train_set, embodiments, features)
        val_set = PaddedSamples(val_set, embodiments, features) if val_set is not None else None
    return TrainData(train_set, val_set, tasks, embodiments, rename_map, args.fill_missing_cameras)


def selected_episodes(episodes: list[int], wanted: tuple[int, ...], root: str) -> list[int]:
    """`--dataset.episodes` (LeRobot's flag): those episodes of the dataset, all when unset."""
    if not wanted:
        return episodes
    missing = sorted(set(wanted) - set(episodes))
    if missing:
        raise DatasetError(
            f"--dataset.episodes asks for episodes {missing[:10]} that dataset {root} does not have "
            f"(it has {len(episodes)}: {episodes[0]}..{episodes[-1]})"
        )
    return sorted(set(wanted))


def renamed(features: dict[str, dict], rename_map: dict[str, str], where: str) -> dict[str, dict]:
    """`features` under the names `rename_map` gives them: a source it lacks or a target it already has (and keeps)
    is an error naming both."""
    for source, target in rename_map.items():
        if source not in features:
            raise DatasetError(
                f"--rename_map renames {source!r}, which the {where} does not have; it has {sorted(features)}"
            )
        if target in features and target not in rename_map:
            raise DatasetError(f"--rename_map renames {source!r} onto {target!r}, which the {where} already has")
    return {rename_map.get(k, k): v for k, v in features.items()}


def episode_subset(episodes: list[int], fraction: float, seed: int) -> list[int]:
    """`fraction` of `episodes` (at least one), the same ones for the same seed: a bounded replay buffer."""
    if fraction >= 1.0:
        return episodes
    keep = max(1, round(len(episodes) * fraction))
    order = np.random.default_rng([seed, len(episodes)]).permutation(len(episodes))[:keep]
    return sorted(episodes[i] for i in order)


class GlobalBatches(Sampler[list]):
    """Per-process index lists for global batches `start, start+1, ...` of the endless epoch stream; with
    `positions`, (index, position in the stream) pairs, what `AugmentedSamples` seeds each sample's draw with."""

    def __init__(
        self, sampler: WeightedDatasetSampler, global_batch: int, rank: int, world: int, start: int, stop: int,
        positions: bool = False,
    ):  # fmt: skip
        if global_batch % world:
            raise ValueError(f"batch_size {global_batch} is not divisible by the {world} processes")
        self.sampler, self.global_batch = sampler, global_batch
        self.local = global_batch // world
        self.rank, self.start, self.stop, self.positions = rank, start, stop, positions

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.sampler)
        position = self.start * self.global_batch
        epoch, offset = divmod(position, n)
        order = self.sampler.epoch_indices(epoch)
        for k in range(self.start, self.stop):
            batch = []
            while len(batch) < self.global_batch:
                if offset == n:
                    epoch, offset = epoch + 1, 0
                    order = self.sampler.epoch_indices(epoch)
                take = min(self.global_batch - len(batch), n - offset)
                batch += order[offset : offset + take].tolist()
                offset += take
            first = self.rank * self.local
            mine = batch[first : first + self.local]
            if self.positions:
                first += k * self.global_batch
                mine = [(index, first + i) for i, index in enumerate(mine)]
            yield mine
