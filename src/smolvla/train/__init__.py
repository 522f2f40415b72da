"""Training SmolVLA by imitation: `TrainConfig` + `smolvla.train.trainer.train(config)` (what `smolvla train` runs),
and the optimizer / learning-rate presets it uses."""

from smolvla.train.config import TrainConfig
from smolvla.train.optim import Schedule, lr_factor, make_optimizer, make_scheduler

__all__ = ["Schedule", "TrainConfig", "lr_factor", "make_optimizer", "make_scheduler"]
