"""The heat-map of a continual run: success on every task (columns) after every stage (rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smolvla.atomic import save_figure


def plot_matrix(results: dict[str, Any], path: Path) -> Path:
    """R[i][j] as an annotated heat-map (blank where task j was not seen yet); the validation loss matrix instead
    when no task is simulated."""
    import matplotlib  # the optional `sim` extra (charts): imported when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    simulated = any(v is not None for row in results["success_matrix"] for v in row)
    key, label = ("success_matrix", "success") if simulated else ("loss_matrix", "validation loss")
    values = np.array([[np.nan if v is None else v for v in row] for row in results[key]], dtype=float)
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(1.2 * cols + 2.5, 0.6 * rows + 1.8))
    image = ax.imshow(values, cmap="viridis", vmin=0.0 if simulated else None, vmax=1.0 if simulated else None)
    for i in range(rows):
        for j in range(cols):
            if np.isfinite(values[i, j]):
                dark = image.norm(values[i, j]) < 0.6  # white on viridis' dark end, black on its yellow end
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color="w" if dark else "k", fontsize=9)
    ax.set_xticks(range(cols), results["tasks"], rotation=30, ha="right")
    ax.set_yticks(range(rows), [s["name"] for s in results["stages"]])
    ax.set_xlabel("task")
    ax.set_ylabel("after stage")
    metrics = results.get("metrics")
    extra = f"  FWT {metrics['FWT']:.2f} NBT {metrics['NBT'] or 0:.2f} AUC {metrics['AUC']:.2f}" if metrics else ""
    ax.set_title(f"{results['method']}: {label}{extra}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(fig, path)
