"""Inference engines behind one policy interface: PyTorch (`SmolVLAPolicy`) or ONNX Runtime (`OnnxPolicy`, from a
verified export that is written once per checkpoint and reused). onnx/onnxruntime are the optional `onnx` extra,
imported only when an ONNX runtime is asked for."""

from __future__ import annotations

from pathlib import Path

from smolvla.errors import ConfigError
from smolvla.policy import SmolVLAPolicy

RUNTIMES = ("torch", "onnx", "onnx_int8")


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {RUNTIMES}, got {runtime!r}")


def load_policy(path: str | Path, runtime: str = "torch", device: str = "cpu"):
    """The checkpoint at `path` on `runtime`: torch, onnx (fp32) or onnx_int8 (int8 weight matmuls); the ONNX ones
    export the checkpoint on first use (`<pretrained_model>/onnx*`, verified) and reuse it afterwards."""
    check_runtime(runtime)
    if runtime == "torch":
        return SmolVLAPolicy.from_pretrained(path, device=device)
    from smolvla.runtime.export import ensure_export  # the optional `onnx` extra
    from smolvla.runtime.onnx_policy import OnnxPolicy

    directory = ensure_export(path, "int8" if runtime == "onnx_int8" else "none")
    return OnnxPolicy(directory, provider="cuda" if str(device).startswith("cuda") else "cpu")
