"""`OnnxPolicy`: SmolVLA inference on ONNX Runtime behind the PyTorch policy's interface (`predict_chunk`,
`select_action`, `reset`, `config`), so the server, the evaluator and the benchmark take either.

An export directory (`smolvla export`) is self-contained: the two graphs, the checkpoint's config and processors, and
`manifest.json` tying them to the weights they came from. Observations are checked and brought to model space by the
same code as the PyTorch policy (`smolvla.model.batch`); the Euler loop runs here, one velocity-graph call per step,
with the prefix cache's arrays passed back to every step as they came out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smolvla.errors import CheckpointError, ConfigError
from smolvla.model.batch import prepare_observation
from smolvla.model.checkpoint import CONFIG_NAME
from smolvla.model.config import SmolVLAConfig
from smolvla.model.rectified_flow import euler_sample
from smolvla.policy import ActionQueue
from smolvla.runtime.graphs import PREFIX_GRAPH, VELOCITY_GRAPH, cache_names, prefix_inputs

MANIFEST = "manifest.json"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an ONNX export: no {MANIFEST} (write one with `smolvla export`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def session_options(threads: int | None = None):
    import onnxruntime as ort  # the optional `onnx` extra

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No spinning between ops: ONNX Runtime's spinning threads fight PyTorch's (the observation is prepared in
    # torch) and the server's for the cores. Measured on 2 cores, tiny 10-step chunk: 52.8 ms spinning, 7.1 ms not.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxPolicy(ActionQueue):
    """The prefix and velocity graphs of an export directory, run on ONNX Runtime (`provider`: cpu, cuda,
    tensorrt)."""

    # Real-time chunking: guided sampling differentiates through the expert; training-time RTC's given steps need a
    # flow time per chunk step, which the exported velocity graph (one time per sample) does not take.
    supports_guided_rtc = supports_trained_rtc = False

    def __init__(self, directory: str | Path, provider: str = "cpu", threads: int | None = None):
        try:
            import onnxruntime as ort  # the optional `onnx` extra
        except ImportError as e:
            raise ConfigError(
                "the ONNX runtime needs onnxruntime, which is not installed: pip install 'smolvla[onnx]'"
            ) from e
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.config = SmolVLAConfig.from_json(self.directory / CONFIG_NAME)
        if provider not in PROVIDERS:
            raise ConfigError(f"ONNX provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
        if PROVIDERS[provider] not in ort.get_available_providers():
            raise ConfigError(f"{PROVIDERS[provider]} is not available in this onnxruntime build "
                              f"(it has {ort.get_available_providers()})")  # fmt: skip
        providers = [PROVIDERS[provider], "CPUExecutionProvider"] if provider != "cpu" else [PROVIDERS["cpu"]]
        options = session_options(threads)
        self.prefix_session = ort.InferenceSession(str(self.directory / PREFIX_GRAPH), options, providers=providers)
        self.velocity_session = ort.InferenceSession(str(self.directory / VELOCITY_GRAPH), options, providers=providers)
        self.prefix_names = [i.name for i in self.prefix_session.get_inputs()]
        self.cache_names = cache_names(self.manifest["layers"])
        self.vocab_size = int(self.manifest["vocab_size"])
        self.device = torch.device("cpu")  # inputs and outputs live on the host; the provider places the work
        self.reset()

    def eval(self) -> OnnxPolicy:
        return self

    def prepare_observation(self, batch: dict[str, Any]):
        return prepare_observation(batch, self.config, self.vocab_size, self.device)

    @torch.no_grad()
    def predict_chunk(
        self, batch: dict[str, Any], noise: Tensor | None = None, num_steps: int | None = None, inpainting=None,
        action_prefix=None,
    ) -> Tensor:  # fmt: skip
        """Sample an action chunk (B, chunk_size, action_dim) in model (normalized) space, as
        `SmolVLAPolicy.predict_chunk` does: the same checks and the same Euler loop (`euler_sample`), with the
        velocity graph in place of the expert."""
        if inpainting is not None or action_prefix is not None:
            raise ConfigError("real-time chunking (guided or trained) needs the PyTorch runtime; use "
                              "--runtime=torch, or send no queued actions")  # fmt: skip
        prefix = self.prepare_observation(batch)
        noise, steps = self.sampling_inputs(prefix.state.shape[0], noise, num_steps)
        feeds = {
            n: np.ascontiguousarray(t.numpy()) for n, t in zip(self.prefix_names, prefix_inputs(prefix), strict=True)
        }
        step_feeds = dict(zip(self.cache_names, self.prefix_session.run(None, feeds), strict=True))

        def velocity(x_t: Tensor, time: Tensor) -> Tensor:  # numpy views both ways: no copies
            step_feeds["x_t"], step_feeds["time"] = x_t.numpy(), time.numpy()
            return torch.from_numpy(self.velocity_session.run(None, step_feeds)[0])

        return euler_sample(velocity, noise, steps)[..., : self.config.action_dim]
