"""`smolvla export`: a checkpoint as ONNX graphs, verified against PyTorch before it is kept.

The export directory holds `prefix.onnx` and `velocity.onnx` (weights as external data), the checkpoint's config,
processors and tokenizer (everything but `model.safetensors`, so the directory runs on its own), and `manifest.json`:
the sha256 of the weights it came from, the opset, the quantization, and the verification result. fp32 exports whose
chunk differs from PyTorch's by more than `tolerance` (same observation, same noise) are refused and nothing is
written; int8 exports report their error (quantization changes the numbers by design; measure closed-loop success).
`ensure_export` reuses a matching export and writes one only when none matches, so `--runtime=onnx` exports once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smolvla.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from smolvla.atomic import remove_stale_temps, replace_directory, temp_directory_for
from smolvla.errors import ConfigError
from smolvla.keys import EMPTY_CAMERA_PREFIX, LANG_MASK, LANG_TOKENS, STATE_KEY
from smolvla.model.checkpoint import WEIGHTS_NAME, pretrained_dir, weights_sha256
from smolvla.policy import SmolVLAPolicy
from smolvla.runtime.graphs import OPSET, PREFIX_GRAPH, VELOCITY_GRAPH, export_graphs
from smolvla.runtime.onnx_policy import MANIFEST, OnnxPolicy, read_manifest
from smolvla.runtime.quantize import QUANTIZATIONS, quantize_graph

FORMAT = 2  # 2: opset 23 graphs


@dataclass
class ExportSource:
    path: str | None = None  # the checkpoint: a pretrained_model directory, a run's checkpoint, or a hub id


@dataclass
class ExportConfig:
    policy: ExportSource = field(default_factory=ExportSource)
    output_dir: str | None = None  # default: <pretrained_model>/onnx (or onnx_int8)
    quantize: str = "none"  # none | int8 (ONNX Runtime dynamic int8 of the weight matmuls)
    tolerance: float = 1e-4  # fp32: max |chunk difference| to PyTorch allowed at export
    seed: int = 0  # the random verification observation and noise

    def validate(self) -> None:
        if not self.policy.path:
            raise ConfigError("set --policy.path=<a checkpoint> to export")
        if self.quantize not in QUANTIZATIONS:
            raise ConfigError(f"--quantize must be one of {QUANTIZATIONS}, got {self.quantize!r}")
        if not self.tolerance > 0:
            raise ConfigError(f"--tolerance must be > 0, got {self.tolerance}")


def default_export_dir(checkpoint: Path, quantize: str) -> Path:
    return checkpoint / ("onnx" if quantize == "none" else f"onnx_{quantize}")


def sample_batch(policy: SmolVLAPolicy, batch_size: int, tokens: int, seed: int) -> dict[str, torch.Tensor]:
    """A random model-space observation with the policy's cameras (one masked out in the last sample)."""
    g = torch.Generator().manual_seed(seed)
    cfg = policy.config
    batch: dict[str, torch.Tensor] = {}
    for key, feature in cfg.image_features.items():
        if not key.startswith(EMPTY_CAMERA_PREFIX):
            batch[key] = torch.rand(batch_size, *feature.shape, generator=g)
    batch[STATE_KEY] = torch.randn(batch_size, cfg.state_dim, generator=g)
    tokens = min(tokens, cfg.tokenizer_max_length)
    batch[LANG_TOKENS] = torch.randint(0, policy.vocab_size, (batch_size, tokens), generator=g)
    mask = torch.ones(batch_size, tokens, dtype=torch.bool)
    mask[-1, tokens // 2 :] = False  # a shorter instruction: padding must not leak into the cache
    batch[LANG_MASK] = mask
    return batch


def chunk_difference(policy: SmolVLAPolicy, runtime: OnnxPolicy, seed: int) -> float:
    """max |Δ| of the chunk (model space), PyTorch vs the export, on an observation of another batch size and
    language length than the traced one, with the same noise and the checkpoint's num_steps."""
    batch = sample_batch(policy, 3, 7, seed + 1)
    cfg = policy.config
    noise = torch.randn(3, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(seed + 2))
    expected = policy.predict_chunk(batch, noise=noise)
    return float((runtime.predict_chunk(batch, noise=noise) - expected).abs().max())


def export_policy(config: ExportConfig) -> Path:
    """Export, verify, and swap the directory in; returns it. Nothing is left behind on failure."""
    config.validate()
    require_onnx()
    checkpoint = pretrained_dir(config.policy.path)
    target = Path(config.output_dir) if config.output_dir else default_export_dir(checkpoint, config.quantize)
    remove_stale_temps(target)
    policy = SmolVLAPolicy.from_pretrained(checkpoint).eval()
    tmp = temp_directory_for(target)
    try:
        for item in checkpoint.iterdir():  # config, processors, tokenizer, vlm/: everything but the weights
            if item.name in (WEIGHTS_NAME, ADAPTER_WEIGHTS, ADAPTER_CONFIG) or item.name.startswith((".", "onnx")):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        prefix = policy.prepare_observation(sample_batch(policy, 2, 5, config.seed))
        layers = export_graphs(policy.model, prefix, tmp)
        if config.quantize != "none":
            for graph in (PREFIX_GRAPH, VELOCITY_GRAPH):
                quantize_graph(tmp / graph, config.quantize)
        manifest: dict[str, Any] = {
            "format": FORMAT, "weights_sha256": weights_sha256(checkpoint), "checkpoint": str(checkpoint),
            "graphs": [PREFIX_GRAPH, VELOCITY_GRAPH], "opset": OPSET, "quantize": config.quantize,
            "layers": layers, "vocab_size": policy.vocab_size, "versions": _versions(),
        }  # fmt: skip
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        difference = chunk_difference(policy, OnnxPolicy(tmp), config.seed)
        if config.quantize == "none" and not difference <= config.tolerance:
            raise ConfigError(
                f"the ONNX export of {checkpoint} differs from PyTorch by {difference:.3g} on a chunk (allowed "
                f"{config.tolerance:g}); nothing was written"
            )
        manifest["verify"] = {"max_abs_chunk_diff": difference, "num_steps": policy.config.num_steps, "batch": 3}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def ensure_export(path: str | Path, quantize: str = "none") -> Path:
    """The export of checkpoint `path` for `quantize` (`<pretrained_model>/onnx*`): written the first time, reused
    after. One made from other weights (the checkpoint was overwritten since) is refused, never run."""
    checkpoint = pretrained_dir(path)
    target = default_export_dir(checkpoint, quantize)
    if not (target / MANIFEST).is_file():
        return export_policy(ExportConfig(policy=ExportSource(str(checkpoint)), quantize=quantize))
    check_matches(target, checkpoint)
    return target


def check_matches(export: Path, checkpoint: Path) -> None:
    """The export was made from exactly these weights, in this format."""
    manifest = read_manifest(export)
    if manifest.get("format") != FORMAT:
        raise ConfigError(
            f"the ONNX export {export} is in format {manifest.get('format')}, this smolvla writes and runs format "
            f"{FORMAT}: export again with `smolvla export --policy.path={checkpoint}` (it replaces {export.name}/)"
        )
    have, want = manifest.get("weights_sha256"), weights_sha256(checkpoint)
    if have != want:
        raise ConfigError(
            f"the ONNX export {export} does not match {checkpoint} (exported from weights sha256 {str(have)[:12]}, "
            f"the checkpoint's are {want[:12]}): export again with `smolvla export --policy.path={checkpoint}` "
            f"(it replaces {export.name}/)"
        )


def require_onnx() -> None:
    """One clear line when the optional `onnx` extra is missing, before any work."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError as e:
            raise ConfigError(f"ONNX export needs {module}, which is not installed: pip install 'smolvla[onnx]'") from e


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
