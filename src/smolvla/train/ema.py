"""Exponential moving average of the trainable weights: the average is what gets saved as the policy."""

import contextlib

import torch


class EMA:
    def __init__(self, params: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.params = params
        self.shadow = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped(self):
        """Temporarily put the averaged weights into the model (for saving); yields the raw weights."""
        raw = {k: p.detach().clone() for k, p in self.params.items()}
        for name, p in self.params.items():
            p.copy_(self.shadow[name])
        try:
            yield raw
        finally:
            for name, p in self.params.items():
                p.copy_(raw[name])

    @torch.no_grad()
    def load(self, raw: dict[str, torch.Tensor]) -> None:
        """Resume: the model holds the saved average; put it in the shadow and the raw weights back in the model."""
        for name, value in self.params.items():
            self.shadow[name].copy_(value.detach())
        for name, p in self.params.items():
            p.copy_(raw[name])
