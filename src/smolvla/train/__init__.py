"""Training SmolVLA by imitation: optimizer and learning-rate presets (the trainer itself builds on these)."""

from smolvla.train.optim import Schedule, lr_factor, make_optimizer, make_scheduler

__all__ = ["Schedule", "lr_factor", "make_optimizer", "make_scheduler"]
