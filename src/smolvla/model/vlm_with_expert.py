"""The SmolVLM backbone and the action expert, run as two interleaved Llama stacks.

Layer i of the backbone is paired with expert layer i // m (m = num_vlm_layers / num_expert_layers) when i % m == 0;
otherwise the expert stream skips it. At a paired layer the expert either
  * self-attends jointly (SA): its action tokens attend to the backbone's prefix keys/values and to their own, or
  * cross-attends (CA): its queries attend to the backbone's prefix keys/values, projected into the expert's KV
    space by the expert layer's own k_proj / v_proj.

The backbone (prefix: images, language, state) never attends to the action tokens (block-causal mask), so its
computation does not depend on the suffix. That is why training and sampling share one path here: the prefix is
encoded once into a `PrefixCache` (per paired layer: RoPE'd keys and values for SA layers; keys and values already
projected by the expert for CA layers), and the expert runs against that cache: once per training batch, or once
per Euler step during sampling. This is the same function LeRobot computes with its joint pass, minus work whose
result nobody reads (the last used backbone layer's attention and MLP, the final backbone norm, the LM head) and
minus re-projecting the CA keys/values every denoising step.

Attention is PyTorch SDPA with additive masks whose masked entries are the dtype's minimum, as LeRobot's eager
attention, so fully masked rows (padding tokens) give finite values instead of NaN.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from transformers import LlamaModel, SmolVLMForConditionalGeneration

from smolvla.errors import ConfigError
from smolvla.model.backbone import Backbone
from smolvla.model.config import SmolVLAConfig

ROPE_BASE = 10_000.0  # LeRobot's SmolVLA uses this, not the backbone config's rope_theta.


def rope_tables(positions: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos/sin of RoPE angles for integer positions (B, L): each (B, 1, L, head_dim // 2), float32."""
    half = head_dim // 2
    exponents = (2.0 / head_dim) * torch.arange(half, dtype=torch.float32, device=positions.device)
    radians = positions[..., None].to(torch.float32) / (ROPE_BASE**exponents)
    return torch.cos(radians)[:, None], torch.sin(radians)[:, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, L, D) by the half-split convention, in float32, returning x's dtype."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def block_attention_mask(pad_masks: Tensor, att_flags: Tensor) -> Tensor:
    """big_vision-style mask (B, L, L): i sees j iff both are valid and cumsum(flags)[j] <= cumsum(flags)[i]."""
    cumsum = torch.cumsum(att_flags.to(torch.int64), dim=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    return causal & pad_masks[:, None, :] & pad_masks[:, :, None]


def _with_grad_of(value: Tensor, recomputed: Tensor) -> Tensor:
    """`value`'s numbers exactly (v + (r - r) == v in floating point) with `recomputed`'s gradient: a row recomputed
    for autograd never changes the forward pass by an ulp."""
    return value + (recomputed - recomputed.detach())


def _splice(frozen: Tensor, row: Tensor, at: int, dim: int) -> Tensor:
    """`frozen` whose slice `at` along `dim` carries `row`'s gradient (its values stay `frozen`'s)."""
    index = [slice(None)] * frozen.dim()
    index[dim] = slice(at, at + 1)
    spliced = _with_grad_of(frozen[tuple(index)], row)
    return torch.cat([frozen.narrow(dim, 0, at), spliced, frozen.narrow(dim, at + 1, frozen.shape[dim] - at - 1)], dim)


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, Lq, Lk) bool -> (B, 1, Lq, Lk) additive mask with the dtype's minimum where masked."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)[:, None]


@dataclass(frozen=True)
class LayerPlan:
    """Backbone layer `vlm`, paired with expert layer `expert` (None: the expert skips it), SA or CA."""

    vlm: int
    expert: int | None
    cross: bool


def plan_layers(num_vlm: int, num_expert: int, attention_mode: str, self_attn_every_n_layers: int) -> list[LayerPlan]:
    if num_expert > num_vlm or num_vlm % num_expert:
        raise ConfigError(f"num_expert_layers ({num_expert}) must divide num_vlm_layers ({num_vlm})")
    m = num_vlm // num_expert
    plan = []
    for i in range(num_vlm):
        sa_here = self_attn_every_n_layers > 0 and i % self_attn_every_n_layers == 0
        cross = attention_mode == "cross_attn" and not sa_here
        plan.append(LayerPlan(i, i // m if i % m == 0 else None, cross))
    return plan


def intermediate_size(hidden: int, multiplier: int = 4, multiple_of: int = 256) -> int:
    """SwiGLU width of the expert: 2/3 of 4x hidden, rounded up to a multiple of 256 (LeRobot's rule)."""
    width = int(multiplier * int(2 * hidden / 3))
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


@dataclass
class PrefixCache:
    """Everything the expert needs from one encoded prefix; built once per batch (training) or per chunk."""

    keys: dict[int, Tensor]  # plan index -> (B, Hkv, P, D): RoPE'd backbone keys (SA) or expert-projected keys (CA)
    values: dict[int, Tensor]
    sa_mask: Tensor  # (B, 1, S, P + S) additive: valid prefix + causal over the action tokens
    ca_mask: Tensor  # (B, 1, S, P) additive: valid prefix
    sa_rope: tuple[Tensor, Tensor]  # action-token positions continuing after the last valid prefix position
    ca_rope: tuple[Tensor, Tensor]  # action-token positions re-based to 0


class VLMWithExpert(nn.Module):
    """Module names follow LeRobot (`vlm.model.*`, `lm_expert.*`) so their state_dict keys load unchanged."""

    def __init__(self, backbone: Backbone, config: SmolVLAConfig):
        super().__init__()

        num_vlm = config.num_vlm_layers if config.num_vlm_layers > 0 else None
        vlm_config = backbone.transformers_config(num_vlm)
        self.vlm = SmolVLMForConditionalGeneration(vlm_config)
        text = vlm_config.text_config
        self.num_vlm_layers = text.num_hidden_layers

        expert_config = copy.deepcopy(text)
        expert_config.hidden_size = int(text.hidden_size * config.expert_width_multiplier)
        expert_config.intermediate_size = intermediate_size(expert_config.hidden_size)
        n_expert = config.num_expert_layers if config.num_expert_layers > 0 else self.num_vlm_layers
        expert_config.num_hidden_layers = n_expert
        expert_config.vocab_size, expert_config.pad_token_id = 1, None  # its token table is never used
        self.plan = plan_layers(self.num_vlm_layers, n_expert, config.attention_mode, config.self_attn_every_n_layers)
        self.lm_expert = LlamaModel(expert_config)
        self.lm_expert.embed_tokens = None

        self.num_heads = text.num_attention_heads
        self.num_kv_heads = text.num_key_value_heads
        self.head_dim = text.head_dim
        kv_width = self.num_kv_heads * self.head_dim
        # CA layers project the backbone's (flattened) keys/values, so their k_proj/v_proj take kv_width inputs.
        for p in self.plan:
            if p.expert is not None and p.cross:
                attn = self.lm_expert.layers[p.expert].self_attn
                attn.k_proj = nn.Linear(kv_width, kv_width, bias=expert_config.attention_bias)
                attn.v_proj = nn.Linear(kv_width, kv_width, bias=expert_config.attention_bias)
        self.expert_hidden_size = expert_config.hidden_size
        self.hidden_size = text.hidden_size
        # The last backbone layer whose K/V the expert reads: layers past it, and its own attention/MLP, never run.
        self.last_used_layer = max(p.vlm for p in self.plan if p.expert is not None)

    # --- embeddings ---
    @property
    def text_model(self) -> nn.Module:
        return self.vlm.model.text_model

    def embed_images(self, pixels: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, tokens, hidden): SigLIP tower, pixel shuffle, projection (unscaled)."""
        vision = self.vlm.model.vision_model
        feats = vision(pixel_values=pixels.to(vision.embeddings.patch_embedding.weight.dtype)).last_hidden_state
        return self.vlm.model.connector(feats)

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.text_model.embed_tokens(ids)

    def unused_backbone_parameters(self) -> list[str]:
        """Backbone parameters that receive no gradient, for freezing (keeps DDP's unused-parameter check quiet)."""
        names = ["vlm.lm_head.", "vlm.model.text_model.norm."]
        last = f"vlm.model.text_model.layers.{self.last_used_layer}."
        names += [last + s for s in ("self_attn.q_proj.", "self_attn.o_proj.", "post_attention_layernorm.", "mlp.")]
        names += [f"vlm.model.text_model.layers.{i}." for i in range(self.last_used_layer + 1, self.num_vlm_layers)]
        return names

    # --- attention helpers ---
    def _heads(self, proj: nn.Linear, x: Tensor, n_heads: int) -> Tensor:
        return proj(x).view(*x.shape[:2], n_heads, self.head_dim).transpose(1, 2)

    def _attend(self, layer: nn.Module, h: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Attention output through o_proj plus residual, then the SwiGLU MLP block plus residual."""
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.num_heads != self.num_kv_heads)
        h = h + layer.self_attn.o_proj(att.transpose(1, 2).reshape(*h.shape[:2], -1))
        return h + layer.mlp(layer.post_attention_layernorm(h))

    # --- prefix ---
    def encode_prefix(
        self, embs: Tensor, pad_masks: Tensor, att_flags: Tensor, suffix_len: int, grad_row: int | None = None
    ) -> PrefixCache:
        """Run the backbone over the prefix (B, P, hidden) and collect what the expert reads from it.

        `grad_row`: the one prefix position whose gradient training needs (the state token, when the backbone is
        frozen). Nothing before it attends to it (block-causal mask), so the rest of the prefix is a constant of the
        trainable weights: the backbone then runs once without autograd, and only that row is recomputed with it,
        its values spliced in unchanged (`_splice`). Same loss to the bit, and the backward no longer goes through
        the backbone's whole prefix, only through one token per layer.
        """
        batch, prefix_len = pad_masks.shape
        positions = torch.cumsum(pad_masks.to(torch.int64), dim=1) - 1
        cos, sin = rope_tables(positions, self.head_dim)
        mask = additive_mask(block_attention_mask(pad_masks, att_flags), embs.dtype)
        if grad_row is None:
            keys, values, _ = self._backbone_kv(embs, cos, sin, mask)
        else:
            with torch.no_grad():
                keys, values, rows = self._backbone_kv(embs.detach(), cos, sin, mask, keep_row=grad_row)
            row = slice(grad_row, grad_row + 1)
            keys, values = self._row_kv(embs[:, row], rows, keys, values, cos[:, :, row], sin[:, :, row],
                                        mask[:, :, row], grad_row)  # fmt: skip
        for idx, p in enumerate(self.plan[: self.last_used_layer + 1]):
            if p.expert is not None and p.cross:  # the expert's own projection of the backbone's keys/values
                attn = self.lm_expert.layers[p.expert].self_attn
                keys[idx] = self._heads(attn.k_proj, keys[idx].transpose(1, 2).flatten(2), self.num_kv_heads)
                values[idx] = self._heads(attn.v_proj, values[idx].transpose(1, 2).flatten(2), self.num_kv_heads)
        keys = {i: k for i, k in keys.items() if self.plan[i].expert is not None}
        values = {i: v for i, v in values.items() if self.plan[i].expert is not None}

        device = pad_masks.device
        offsets = pad_masks.sum(dim=1, keepdim=True)
        steps = torch.arange(suffix_len, device=device)[None].expand(batch, -1)
        prefix_seen = pad_masks[:, None, :].expand(batch, suffix_len, prefix_len)
        causal = torch.ones(suffix_len, suffix_len, dtype=torch.bool, device=device).tril()
        sa_mask = torch.cat([prefix_seen, causal.expand(batch, -1, -1)], dim=2)
        return PrefixCache(
            keys=keys,
            values=values,
            sa_mask=additive_mask(sa_mask, embs.dtype),
            ca_mask=additive_mask(prefix_seen, embs.dtype),
            sa_rope=rope_tables(offsets + steps, self.head_dim),
            ca_rope=rope_tables(steps, self.head_dim),
        )

    def _backbone_kv(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, keep_row: int | None = None):
        """RoPE'd keys and values of every backbone layer up to the last one the expert reads (plan index ->
        (B, Hkv, P, D)), and, with `keep_row`, that row's hidden state entering each layer."""
        keys, values, rows = {}, {}, []
        for idx, p in enumerate(self.plan[: self.last_used_layer + 1]):
            layer = self.text_model.layers[p.vlm]
            if keep_row is not None:
                rows.append(h[:, keep_row : keep_row + 1])
            x = layer.input_layernorm(h)
            keys[idx] = apply_rope(self._heads(layer.self_attn.k_proj, x, self.num_kv_heads), cos, sin)
            values[idx] = self._heads(layer.self_attn.v_proj, x, self.num_kv_heads)
            if p.vlm == self.last_used_layer:
                break
            q = apply_rope(self._heads(layer.self_attn.q_proj, x, self.num_heads), cos, sin)
            h = self._attend(layer, h, q, keys[idx], values[idx], mask)
        return keys, values, rows

    def _row_kv(self, h: Tensor, rows: list[Tensor], keys: dict, values: dict, cos: Tensor, sin: Tensor,
                mask: Tensor, at: int) -> tuple[dict, dict]:  # fmt: skip
        """Recompute one prefix row (B, 1, hidden) through the backbone with autograd, against the other rows'
        keys/values computed without it, and splice its keys/values into theirs."""
        for idx, p in enumerate(self.plan[: self.last_used_layer + 1]):
            layer = self.text_model.layers[p.vlm]
            h = _with_grad_of(rows[idx], h)
            x = layer.input_layernorm(h)
            k = apply_rope(self._heads(layer.self_attn.k_proj, x, self.num_kv_heads), cos, sin)
            keys[idx] = _splice(keys[idx], k, at, 2)
            values[idx] = _splice(values[idx], self._heads(layer.self_attn.v_proj, x, self.num_kv_heads), at, 2)
            if p.vlm == self.last_used_layer:
                break
            q = apply_rope(self._heads(layer.self_attn.q_proj, x, self.num_heads), cos, sin)
            h = self._attend(layer, h, q, keys[idx], values[idx], mask)
        return keys, values

    # --- expert ---
    def forward_expert(self, suffix: Tensor, cache: PrefixCache) -> Tensor:
        """Run the action expert over suffix tokens (B, S, expert_hidden) against an encoded prefix."""
        h = suffix
        for idx, p in enumerate(self.plan):
            if p.expert is None:
                continue
            layer = self.lm_expert.layers[p.expert]
            x = layer.input_layernorm(h)
            if p.cross:
                q = apply_rope(self._heads(layer.self_attn.q_proj, x, self.num_heads), *cache.ca_rope)
                h = self._attend(layer, h, q, cache.keys[idx], cache.values[idx], cache.ca_mask)
            else:
                q = apply_rope(self._heads(layer.self_attn.q_proj, x, self.num_heads), *cache.sa_rope)
                k = apply_rope(self._heads(layer.self_attn.k_proj, x, self.num_kv_heads), *cache.sa_rope)
                v = self._heads(layer.self_attn.v_proj, x, self.num_kv_heads)
                k = torch.cat([cache.keys[idx], k], dim=2)
                v = torch.cat([cache.values[idx], v], dim=2)
                h = self._attend(layer, h, q, k, v, cache.sa_mask)
        return self.lm_expert.norm(h)
