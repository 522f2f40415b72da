"""SmolVLA inference as two ONNX graphs: the prefix encoder (once per chunk) and the expert's velocity (once per
denoising step), with the Euler loop between them in the runtime.

Why two graphs and not one with the loop unrolled: the prefix encoder is ~2/3 of a full-size chunk's FLOPs and runs
once; the velocity graph is the expert against a fixed key/value cache, the same work every step. Keeping the loop
outside lets one export serve every `num_steps` (a request may ask for 1 or 10), costs one `session.run` per step —
measured at tens of microseconds against milliseconds of expert work — and keeps each graph small enough for ONNX
Runtime's optimizer and quantizer. The graphs' tensors are exactly `Prefix` in and `PrefixCache` out, flattened in a
fixed order (`cache_names`), so the runtime calls them as `VLAFlowMatching.encode` / `.velocity`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from smolvla.model.flow_matching import Prefix, VLAFlowMatching
from smolvla.model.vlm_with_expert import PrefixCache

# Opset 23 has ONNX's Attention op: SDPA exports as one node instead of MatMul/Softmax/Where/IsNaN, which ONNX
# Runtime then fuses. Measured on the full-size prefix graph, this CPU: 2.48 s at opset 18, 1.42 s at 23.
OPSET = 23
PREFIX_GRAPH = "prefix.onnx"
VELOCITY_GRAPH = "velocity.onnx"
PREFIX_INPUTS = ("image_masks", "lang_tokens", "lang_masks", "state")  # then image_0 .. image_{n-1}
CACHE_TAIL = ("sa_mask", "ca_mask", "sa_cos", "sa_sin", "ca_cos", "ca_sin")


def cache_names(layers: list[int]) -> list[str]:
    """The flattened `PrefixCache`: keys and values of each expert-paired layer, then masks and RoPE tables."""
    return [f"key_{i}" for i in layers] + [f"value_{i}" for i in layers] + list(CACHE_TAIL)


def flatten_cache(cache: PrefixCache) -> tuple[Tensor, ...]:
    layers = sorted(cache.keys)
    return (*[cache.keys[i] for i in layers], *[cache.values[i] for i in layers], cache.sa_mask, cache.ca_mask,
            *cache.sa_rope, *cache.ca_rope)  # fmt: skip


def unflatten_cache(layers: list[int], flat: tuple[Tensor, ...]) -> PrefixCache:
    n = len(layers)
    sa_mask, ca_mask, sa_cos, sa_sin, ca_cos, ca_sin = flat[2 * n :]
    keys, values = dict(zip(layers, flat[:n], strict=True)), dict(zip(layers, flat[n : 2 * n], strict=True))
    return PrefixCache(keys, values, sa_mask, ca_mask, (sa_cos, sa_sin), (ca_cos, ca_sin))


class PrefixGraph(nn.Module):
    """(image masks (B, cameras), language tokens and mask, padded state, one image per camera) → flattened cache."""

    def __init__(self, model: VLAFlowMatching):
        super().__init__()
        self.model = model

    def forward(self, image_masks: Tensor, lang_tokens: Tensor, lang_masks: Tensor, state: Tensor, *images: Tensor):
        masks = [image_masks[:, i] for i in range(len(images))]
        prefix = Prefix(list(images), masks, lang_tokens, lang_masks, state)
        return flatten_cache(self.model.encode(prefix))


class VelocityGraph(nn.Module):
    """(x_t (B, chunk, max_action_dim), t (B,), flattened cache) → velocity (B, chunk, max_action_dim)."""

    def __init__(self, model: VLAFlowMatching, layers: list[int]):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, x_t: Tensor, time: Tensor, *cache: Tensor) -> Tensor:
        return self.model.velocity(unflatten_cache(self.layers, cache), x_t, time)


def prefix_inputs(prefix: Prefix) -> tuple[Tensor, ...]:
    return (torch.stack(prefix.image_masks, dim=1), prefix.lang_tokens, prefix.lang_masks, prefix.state,
            *prefix.images)  # fmt: skip


def export_graphs(model: VLAFlowMatching, prefix: Prefix, directory: Path) -> list[int]:
    """Write `prefix.onnx` and `velocity.onnx` (weights as external data beside each) traced on `prefix`, with the
    batch and the language length dynamic; returns the expert-paired layer indices (the cache's order)."""
    auto = torch.export.Dim.AUTO
    inputs = prefix_inputs(prefix)
    cameras = len(prefix.images)
    names = [*PREFIX_INPUTS, *(f"image_{i}" for i in range(cameras))]
    with torch.no_grad():
        cache = model.encode(prefix)
    layers = sorted(cache.keys)
    flat = flatten_cache(cache)
    dynamic = ({0: auto}, {0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto}, tuple({0: auto} for _ in range(cameras)))
    _export(PrefixGraph(model), inputs, dynamic, names, cache_names(layers), directory / PREFIX_GRAPH)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("prefix")
    x_t = torch.randn(prefix.state.shape[0], model.config.chunk_size, model.config.max_action_dim)
    time = torch.full((x_t.shape[0],), 0.5)
    per_layer = [{0: batch, 2: length}] * (2 * len(layers))  # keys, values (B, heads, P, head_dim)
    masks = [{0: batch, 3: length + model.config.chunk_size}, {0: batch, 3: length}]  # (B, 1, S, P + S), (B, 1, S, P)
    dynamic = ({0: batch}, {0: batch}, (*per_layer, *masks, *[{0: batch}] * 4))
    _export(VelocityGraph(model, layers), (x_t, time, *flat), dynamic, ["x_t", "time", *cache_names(layers)],
            ["velocity"], directory / VELOCITY_GRAPH)  # fmt: skip
    return layers


def _export(module: nn.Module, args: tuple, dynamic, inputs: list[str], outputs: list[str], path: Path) -> None:
    with torch.no_grad():  # inference graphs: the training-only paths (`state_grad_row`) stay out of the trace
        program = torch.onnx.export(
            module.eval(), args, dynamic_shapes=dynamic, input_names=inputs, output_names=outputs,
            opset_version=OPSET, dynamo=True, verbose=False,
        )  # fmt: skip
    program.save(str(path), external_data=True)
