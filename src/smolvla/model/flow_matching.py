"""SmolVLA's flow-matching head: prefix/suffix embedding, the training loss and Euler sampling.

Conventions (LeRobot / openpi, see `rectified_flow`): t ~ Beta(1.5, 1) * 0.999 + 0.001, x_t = t * noise + (1 - t) *
actions, the network regresses u = noise - actions, and sampling integrates from t = 1 (noise) to t = 0 (actions)
with dt = -1/num_steps.
Everything here works in model space: state/actions padded to max_state_dim/max_action_dim and already normalized,
images already resized and mapped to [-1, 1]; `SmolVLAPolicy` turns user batches into that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from smolvla.model.backbone import Backbone
from smolvla.model.config import SmolVLAConfig
from smolvla.model.rectified_flow import (
    ActionPrefix,
    Inpainting,
    conditioned_euler_sample,
    euler_sample,
    guided_euler_sample,
    interpolate,
)
from smolvla.model.vlm_with_expert import PrefixCache, VLMWithExpert


def sinusoidal_time_embedding(time: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """sin/cos embedding (..., dim) of t (...) with geometric periods; in float64 (angles reach 2*pi/min_period ~
    1.6e3)."""
    dtype = torch.float32 if time.device.type == "mps" else torch.float64
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = (1.0 / period * 2 * math.pi) * time[..., None].to(dtype)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


@dataclass
class Prefix:
    """Model-space observation: prepared images and their masks, language tokens/mask, padded state."""

    images: list[Tensor]  # each (B, 3, H, W) in [-1, 1]
    image_masks: list[Tensor]  # each (B,) bool
    lang_tokens: Tensor  # (B, L) int64
    lang_masks: Tensor  # (B, L) bool
    state: Tensor  # (B, max_state_dim)


class VLAFlowMatching(nn.Module):
    """Backbone + expert + the small projections around them (LeRobot's `VLAFlowMatching`, same parameter names)."""

    def __init__(self, config: SmolVLAConfig, backbone: Backbone):
        super().__init__()
        self.config = config
        self.vlm_with_expert = VLMWithExpert(backbone, config)
        hidden, expert = self.vlm_with_expert.hidden_size, self.vlm_with_expert.expert_hidden_size
        self.state_proj = nn.Linear(config.max_state_dim, hidden)
        self.action_in_proj = nn.Linear(config.max_action_dim, expert)
        self.action_out_proj = nn.Linear(expert, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * expert, expert)
        self.action_time_mlp_out = nn.Linear(expert, expert)
        fake, glob = backbone.fake_image_token_id, backbone.global_image_token_id
        self.register_buffer("image_start_ids", torch.tensor([fake, glob]), persistent=False)
        self.register_buffer("image_end_ids", torch.tensor([fake]), persistent=False)

    # --- embeddings ---
    def embed_prefix(self, prefix: Prefix) -> tuple[Tensor, Tensor, Tensor]:
        """Concatenate [per camera: (start tokens), image tokens, (end token)], language, state.

        Returns embeddings (B, P, hidden), validity (B, P) and attention-block flags (B, P): 0 for everything
        but the state token, so images and language attend bidirectionally and the state token sees them all.
        """
        vlm = self.vlm_with_expert
        batch = prefix.state.shape[0]
        device = prefix.state.device
        dtype = self.state_proj.weight.dtype
        images = [img.to(dtype) for img in prefix.images]
        if len({img.shape for img in images}) == 1:  # all cameras through the vision tower in one batch
            stacked = vlm.embed_images(torch.cat(images)).unflatten(0, (len(images), batch))
            image_embs = [stacked[i] for i in range(len(images))]  # indexing, not split: exports to ONNX cleanly
        else:
            image_embs = [vlm.embed_images(img) for img in images]
        special = self.config.add_image_special_tokens
        if special:
            start = vlm.embed_tokens(self.image_start_ids)[None].expand(batch, -1, -1)
            end = vlm.embed_tokens(self.image_end_ids)[None].expand(batch, -1, -1)
            ones_start = torch.ones(batch, start.shape[1], dtype=torch.bool, device=device)
            ones_end = torch.ones(batch, end.shape[1], dtype=torch.bool, device=device)
        embs, pads = [], []
        for emb, mask in zip(image_embs, prefix.image_masks, strict=True):
            if special:
                embs.append(start)
                pads.append(ones_start)
            embs.append(emb * torch.tensor(emb.shape[-1] ** 0.5, dtype=emb.dtype, device=device))
            pads.append(mask[:, None].expand(batch, emb.shape[1]))
            if special:
                embs.append(end)
                pads.append(ones_end)
        lang = vlm.embed_tokens(prefix.lang_tokens)
        embs.append(lang * math.sqrt(lang.shape[-1]))
        pads.append(prefix.lang_masks)
        embs.append(self.state_proj(prefix.state.to(dtype))[:, None])
        pads.append(torch.ones(batch, 1, dtype=torch.bool, device=device))

        embs, pads = torch.cat(embs, dim=1), torch.cat(pads, dim=1)
        flags = torch.zeros_like(pads)
        flags[:, -1] = True  # the state token (the last one: an index that stays right for any language length)
        extra = self.config.prefix_length - pads.shape[1]
        if extra > 0:  # fixed-length prefix: zero embeddings, invalid, flag 0
            embs = F.pad(embs, (0, 0, 0, extra))
            pads = F.pad(pads, (0, extra), value=False)
            flags = F.pad(flags, (0, extra), value=False)
        return embs, pads, flags

    def embed_suffix(self, x_t: Tensor, time: Tensor) -> Tensor:
        """One token per chunk step: MLP(concat(action_in_proj(x_t), time embedding)); `time` is one per sample (B,)
        or one per step (B, chunk) (training-time RTC: given steps at t = 0)."""
        action_emb = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        time_emb = sinusoidal_time_embedding(
            time, action_emb.shape[-1], self.config.min_period, self.config.max_period
        ).to(action_emb.dtype)
        if time.ndim == 1:
            time_emb = time_emb[:, None]
        hidden = torch.cat([action_emb, time_emb.expand_as(action_emb)], dim=2)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(hidden)))

    # --- model ---
    def encode(self, prefix: Prefix) -> PrefixCache:
        embs, pads, flags = self.embed_prefix(prefix)
        grad_row = self.state_grad_row(embs, flags)
        return self.vlm_with_expert.encode_prefix(embs, pads, flags, self.config.chunk_size, grad_row=grad_row)

    def state_grad_row(self, embs: Tensor, flags: Tensor) -> int | None:
        """The state token's prefix position when it is the only prefix row a gradient must reach: autograd on and
        the whole backbone frozen (LeRobot's default, train_expert_only). None otherwise: the full prefix pass."""
        if not (torch.is_grad_enabled() and embs.requires_grad):
            return None
        if any(p.requires_grad for p in self.vlm_with_expert.vlm.parameters()):
            return None
        if embs.shape[1] > self.config.prefix_length:  # not padded: the state token is the last, known from the shape
            return embs.shape[1] - 1  # (a Python int: torch.compile keeps the loss one graph, no tensor read)
        return int(flags[0].to(torch.uint8).argmax())

    def velocity(self, cache: PrefixCache, x_t: Tensor, time: Tensor) -> Tensor:
        """Predicted velocity v(x_t, t) (B, chunk, max_action_dim), float32; t (B,) or per step (B, chunk)."""
        out = self.vlm_with_expert.forward_expert(self.embed_suffix(x_t, time), cache)
        return self.action_out_proj(out[:, -self.config.chunk_size :]).float()

    def sample_time(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        # Beta(1.5, 1) via inverse CDF (F(x) = x^1.5), so an explicit generator makes it reproducible.
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float32)
        return u.pow(1.0 / 1.5) * 0.999 + 0.001

    def losses(self, prefix: Prefix, actions: Tensor, noise: Tensor, time: Tensor) -> dict[str, Tensor]:
        """Element-wise flow-matching loss (B, chunk, max_action_dim) and its ingredients; `time` (B,) or per step
        (B, chunk) (steps at t = 0 are given, clean, and the caller leaves them out of the loss)."""
        x_t, u_t = interpolate(noise, actions, time)
        v_t = self.velocity(self.encode(prefix), x_t, time)
        return {"losses_raw": F.mse_loss(v_t, u_t, reduction="none"), "x_t": x_t, "u_t": u_t, "v_t": v_t}

    def velocity_field(self, prefix: Prefix):
        """v(x_t, t) for one observation batch, its prefix encoded once: what `euler_sample` integrates.

        With `use_cache=False` the prefix is re-encoded at every call (LeRobot's uncached path; only useful to check
        that the cache changes nothing).
        """
        cache = self.encode(prefix) if self.config.use_cache else None

        def velocity(x_t: Tensor, time: Tensor) -> Tensor:
            return self.velocity(cache if cache is not None else self.encode(prefix), x_t, time)

        return velocity

    @torch.no_grad()
    def sample(
        self, prefix: Prefix, noise: Tensor, num_steps: int, return_velocities: bool = False,
        inpainting: Inpainting | None = None, action_prefix: ActionPrefix | None = None,
    ):  # fmt: skip
        """Euler-integrate from noise (t = 1) to actions (t = 0) (`euler_sample`); the prefix is encoded once.
        Real-time chunking: with `inpainting`, guided sampling towards the still-queued actions; with
        `action_prefix` (a policy trained with `rtc_training_max_delay`), the given first steps held fixed."""
        if action_prefix is not None:
            return conditioned_euler_sample(self.velocity_field(prefix), noise, num_steps, action_prefix)
        if inpainting is not None:
            return guided_euler_sample(self.velocity_field(prefix), noise, num_steps, inpainting)
        if return_velocities:
            return euler_sample(self.velocity_field(prefix), noise, num_steps, return_velocities=True)
        return self.sample_chunk(prefix, noise, num_steps)

    def sample_chunk(self, prefix: Prefix, noise: Tensor, num_steps: int) -> Tensor:
        """The plain inference path as one function (prefix encoded once, `num_steps` Euler steps), so that
        `torch.compile` can capture a whole chunk in one graph: on a CPU a small model's chunk is mostly per-op and
        per-call overhead, which only disappears when the denoising loop itself is compiled."""
        return euler_sample(self.velocity_field(prefix), noise, num_steps)
