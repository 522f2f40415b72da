"""Lifelong-learning metrics (LIBERO, arXiv 2306.03310) and the per-task forgetting status.

`c[i][k]` is the success on the task learnt in stage k, measured after stage i (i >= k; NaN above the diagonal):
- FWT (forward transfer) = mean_k c[k][k]: how well each new task is learnt;
- NBT (negative backward transfer) = mean over k < K of mean_{i > k} (c[k][k] − c[i][k]): how much is forgotten
  (the last task has no later stage; LIBERO's 1/K average would count it as 0 and report (K−1)/K of this);
- AUC = mean_k (c[k][k] + Σ_{i > k} c[i][k]) / (K − k): success over the rest of the sequence, both at once.
LIBERO takes c[k][k] as the best success seen while learning task k; here it is the success at the stage's end.
"""

from __future__ import annotations

import math

import numpy as np

RETAINED, SLIGHT, SIGNIFICANT, LEARNT = "retained", "slight degradation", "significant forgetting", "learnt"


def lifelong_metrics(c: np.ndarray | list[list[float]]) -> dict[str, float | None]:
    """FWT, NBT and AUC of a K×K stage-by-stage success matrix (entries above the diagonal are ignored)."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"the success matrix must be K×K with K >= 1, got shape {c.shape}")
    k_tasks = c.shape[0]
    lower = np.tril(np.ones_like(c, dtype=bool))
    if not np.isfinite(c[lower]).all():
        raise ValueError("the success matrix has a missing (NaN) entry on or below its diagonal")
    diagonal = np.diag(c)
    nbt = [float(np.mean(diagonal[k] - c[k + 1 :, k])) for k in range(k_tasks - 1)]
    auc = [float((diagonal[k] + c[k + 1 :, k].sum()) / (k_tasks - k)) for k in range(k_tasks)]
    return {
        "FWT": float(diagonal.mean()),
        "NBT": float(np.mean(nbt)) if nbt else None,
        "AUC": float(np.mean(auc)),
    }


def forgetting_status(loss: float | None, learnt_loss: float | None, slight: float, significant: float) -> str | None:
    """A task's status from its validation loss relative to its loss right after it was learnt."""
    if loss is None or learnt_loss is None or not (math.isfinite(loss) and learnt_loss > 0):
        return None
    ratio = loss / learnt_loss
    return RETAINED if ratio <= slight else SLIGHT if ratio <= significant else SIGNIFICANT
