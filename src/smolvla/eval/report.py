"""Evaluation artefacts: a success bar chart, rollout videos and a console table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smolvla.atomic import save_figure
from smolvla.data.video import VideoEncoder, VideoSettings
from smolvla.sim.metaworld_env import CONTROL_FPS, MetaWorldConfig
from smolvla.sim.rollout import Episode

# H.264 plays in every browser and notebook; AV1 (the dataset codec) does not everywhere yet.
VIDEO_CODEC = "libx264"


def write_videos(episodes: list[Episode], env: MetaWorldConfig, directory: Path) -> list[str]:
    """One mp4 per recorded episode, cameras side by side; returns the paths."""
    paths = []
    for episode in sorted((e for e in episodes if e.frames), key=lambda e: (e.task, e.index)):
        views = [episode.frames[f"observation.images.{c}"] for c in env.cameras]
        frames = np.concatenate(views, axis=2)
        path = directory / f"{episode.task}_{episode.index}_{'success' if episode.success else 'failure'}.mp4"
        height, width = frames.shape[1:3]
        encoder = VideoEncoder(
            path.with_suffix(".tmp.mp4"), CONTROL_FPS, width, height, VideoSettings(VIDEO_CODEC, g=CONTROL_FPS)
        )
        encoder.add(frames)
        encoder.close()
        path.with_suffix(".tmp.mp4").replace(path)
        paths.append(str(path))
    return paths


def plot_success(summary: dict[str, Any], path: Path) -> Path:
    """Horizontal bars of success rate per task, coloured by difficulty, with the overall mean in the title."""
    import matplotlib  # the optional `sim` extra (charts): imported when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"easy": "#4c9f70", "medium": "#e0a030", "hard": "#d0603a", "very_hard": "#8e3b8e"}
    tasks = list(summary["per_task"])
    rates = [100 * summary["per_task"][t]["success_rate"] for t in tasks]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(tasks) + 1.2))
    ax.barh(tasks, rates, color=[colors[summary["per_task"][t]["difficulty"]] for t in tasks])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("success rate (%)")
    ax.set_title(f"success {100 * summary['overall']['success_rate']:.1f} % over {len(tasks)} tasks")
    levels = [level for level in colors if level in summary["per_difficulty"]]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[level]) for level in levels]
    ax.legend(handles, levels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return save_figure(fig, path, dpi=100)


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def print_table(summary: dict[str, Any]) -> None:
    rows = [("task", "instruction", "success %", "length", "chunk ms")]
    for task, r in summary["per_task"].items():
        rows.append(
            (task, r["instruction"], _fmt(r["success_rate"], 100), _fmt(r["mean_length"]), _fmt(r["chunk_ms_mean"]))
        )
    for level, rate in summary["per_difficulty"].items():
        rows.append((f"[{level}]", "", _fmt(rate, 100), "", ""))
    o = summary["overall"]
    rows.append(("[overall]", "", _fmt(o["success_rate"], 100), _fmt(o["mean_length"]), _fmt(o["chunk_ms_mean"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
