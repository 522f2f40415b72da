"""Choosing the checkpoint that succeeds, not the one with the lowest loss: `--eval_freq` and `checkpoints/best`.

The trainer knows no simulator. A `CheckpointEvaluator` (Meta-World's is `smolvla.eval.training`) is handed to it;
every `eval_freq` steps it saves a checkpoint, asks the evaluator for that checkpoint's closed-loop metrics (at least
`eval/success`), logs them, and moves `checkpoints/best` to it when its success is higher than the best so far (ties:
the lower validation loss). `checkpoints/best.json` records the choice and every evaluated step, so a resumed run
keeps it, and `keep_last` never prunes the best checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from smolvla.atomic import atomic_write_text
from smolvla.train.checkpoint import point_link, step_name

BEST = "best"
BEST_FILE = "best.json"
SUCCESS = "eval/success"


class CheckpointEvaluator(Protocol):
    def check(self, policy: Any) -> None:
        """Raise a ConfigError now (before training) if this policy cannot be evaluated (e.g. missing cameras)."""

    def __call__(self, pretrained_model: Path, step: int) -> dict[str, float]:
        """Closed-loop metrics of the checkpoint: `eval/success` in [0, 1], plus anything else to log."""


@dataclass
class BestCheckpoint:
    step: int | None = None
    success: float | None = None
    val_loss: float | None = None
    evaluated: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, checkpoints: Path) -> BestCheckpoint:
        path = checkpoints / BEST_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def better(self, success: float, val_loss: float | None) -> bool:
        if self.success is None or success > self.success:
            return True
        if success < self.success:
            return False
        return val_loss is not None and (self.val_loss is None or val_loss < self.val_loss)

    def offer(self, checkpoints: Path, step: int, success: float, val_loss: float | None) -> bool:
        """Record the evaluation of checkpoint `step`; point `best` at it if it beats the best so far."""
        improved = self.better(success, val_loss)
        if improved:
            self.step, self.success, self.val_loss = step, success, val_loss
        self.evaluated = sorted({*self.evaluated, step})
        atomic_write_text(checkpoints / BEST_FILE, json.dumps(asdict(self), indent=2) + "\n")
        if improved:
            point_link(checkpoints, BEST, step_name(step))
        return improved

    def protected(self) -> frozenset[str]:
        """Step directories `keep_last` must not remove."""
        return frozenset() if self.step is None else frozenset({step_name(self.step)})
