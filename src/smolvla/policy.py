"""`SmolVLAPolicy`: the user-facing policy over model-space batches (LeRobot 0.6 semantics).

Batches use LeRobot's keys and model space (state/actions normalized, images float in [0, 1], language tokenized;
`smolvla.model.batch` has the contract and checks it). Normalization and tokenization are processors saved beside
the checkpoint. This class ties the pieces together: construction (preset or checkpoint), freezing, the training
loss, chunk sampling, compilation and the action queue of `select_action`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers.initialization import no_init_weights

from smolvla import adapters
from smolvla.errors import CheckpointError, ConfigError
from smolvla.keys import STATE_KEY
from smolvla.model.backbone import Backbone, resolve_backbone
from smolvla.model.batch import check_prefix, check_shape, prepare_actions, prepare_observation
from smolvla.model.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_strict,
    pretrained_dir,
    read_weights,
    split_legacy_stats,
    write_pretrained,
)
from smolvla.model.config import SmolVLAConfig
from smolvla.model.flow_matching import Prefix, VLAFlowMatching
from smolvla.model.presets import preset_config
from smolvla.model.rectified_flow import ActionPrefix, Inpainting, prefix_time
from smolvla.processors import EmbodimentProcessors, Pipeline

REDUCTIONS = ("mean", "none", "sum_count")


class ActionQueue:
    """`select_action` over `predict_chunk`: one action per control step, a new chunk every `n_action_steps` calls,
    and the checks of a chunk's noise and step count. Shared by every runtime (PyTorch here, ONNX Runtime in
    `smolvla.runtime`) so they sample and queue identically."""

    def reset(self) -> None:
        """Forget queued actions; call at every episode start."""
        self._queue: Tensor | None = None
        self._queue_pos = 0

    @property
    def will_predict(self) -> bool:
        """True when the next `select_action` computes a new chunk (the expensive call) rather than dequeuing."""
        return self._queue is None or self._queue_pos >= self.config.n_action_steps

    def sampling_inputs(self, batch_size: int, noise: Tensor | None, num_steps: int | None) -> tuple[Tensor, int]:
        """A chunk's starting noise (B, chunk_size, max_action_dim) on the policy's device, drawn when not given, and
        its number of Euler steps (the config's when not given), both checked."""
        cfg = self.config
        shape = (batch_size, cfg.chunk_size, cfg.max_action_dim)
        if noise is None:
            noise = torch.randn(shape, dtype=torch.float32, device=self.device)
        check_shape("noise", noise, shape)
        steps = cfg.num_steps if num_steps is None else int(num_steps)
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {steps}")
        return noise.to(self.device), steps

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any]) -> Tensor:
        """One action (B, action_dim) per call; a new chunk is predicted every n_action_steps calls."""
        if self.will_predict:
            self._queue = self.predict_chunk(batch)[:, : self.config.n_action_steps]
            self._queue_pos = 0
        action = self._queue[:, self._queue_pos]
        self._queue_pos += 1
        return action


class SmolVLAPolicy(ActionQueue, nn.Module):
    """SmolVLA policy: `compute_loss` for training, `predict_chunk` / `select_action` for control."""

    def __init__(self, config: SmolVLAConfig, backbone: Backbone | None = None):
        super().__init__()
        if backbone is None:
            backbone = resolve_backbone(config.vlm_model_name, need_special_ids=config.add_image_special_tokens)
        if config.state_dim is None:
            raise ConfigError(f"input_features must include {STATE_KEY!r}")
        if not config.image_features:
            raise ConfigError("input_features must include at least one VISUAL camera feature")
        self.config = config
        self.backbone = backbone
        self.model = VLAFlowMatching(config, backbone)
        self.apply_freezing()
        self.reset()

    # --- construction ---
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SmolVLAPolicy:
        """An untrained policy of a built-in architecture ("smolvla_base" full size, "tiny"), fields overridable."""
        return cls(SmolVLAConfig.from_dict({**preset_config(name), **overrides}))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        vlm_config: Backbone | dict[str, Any] | str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> SmolVLAPolicy:
        """Load a LeRobot-style `pretrained_model/` directory (config.json + model.safetensors), strictly.

        `vlm_config` overrides where the backbone architecture comes from (a SmolVLM config dict or directory).
        Normalization buffers of old LeRobot checkpoints are not weights: `split_legacy_stats` reads them.
        """
        path = pretrained_dir(path)
        if adapters.is_adapter_dir(path):
            policy = cls._from_adapter(path, vlm_config)
            return policy.to(device) if device is not None else policy
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path} is not a pretrained_model directory: no {CONFIG_NAME}")
        config = SmolVLAConfig.from_json(path / CONFIG_NAME)
        backbone = resolve_backbone(
            config.vlm_model_name,
            checkpoint_dir=path,
            override=vlm_config,
            need_special_ids=config.add_image_special_tokens,
        )
        weights, _ = split_legacy_stats(read_weights(path / WEIGHTS_NAME))
        with no_init_weights():  # every tensor is overwritten below; skip the random init of 450M parameters
            policy = cls(config, backbone)
        load_strict(policy, weights, source=str(path / WEIGHTS_NAME))
        return policy.to(device) if device is not None else policy

    @classmethod
    def _from_adapter(cls, path: Path, vlm_config) -> SmolVLAPolicy:
        """A PEFT checkpoint (LeRobot's `use_peft` layout): its base policy with the adapter merged in, and the
        checkpoint's own config (the fine-tune's settings, e.g. n_action_steps) on it."""
        policy = adapters.load_merged(path, lambda base: cls.from_pretrained(base, vlm_config=vlm_config))
        if (path / CONFIG_NAME).is_file():
            saved = SmolVLAConfig.from_json(path / CONFIG_NAME)
            for f in dataclasses.fields(saved):
                if f.name not in ("use_peft", "pretrained_path"):
                    setattr(policy.config, f.name, getattr(saved, f.name))
            policy.config.validate()
        return policy

    def save_pretrained(self, path: str | Path, processors: Sequence[Pipeline | EmbodimentProcessors] = ()) -> None:
        """Write config.json + model.safetensors (LeRobot layout) atomically, and `processors` (pre, post), e.g. from
        `smolvla.processors.make_processors` (or one `EmbodimentProcessors` of a several-robot policy), into the
        same directory (`policy_preprocessor.json`, ..., tokenizer files); reload those with
        `smolvla.processors.load_processors(path)`."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

        def write_processors(directory: Path) -> None:
            for pipeline in processors or ():
                pipeline.save(directory)

        write_pretrained(Path(path), self.config.to_files(), tensors, self.backbone, write_processors)

    def apply_freezing(self) -> None:
        """LeRobot's presets: train_expert_only freezes the backbone, freeze_vision_encoder the SigLIP tower."""
        vlm = self.model.vlm_with_expert
        cfg = self.config
        for p in vlm.vlm.parameters():
            p.requires_grad_(not cfg.train_expert_only)
        if cfg.freeze_vision_encoder:
            vlm.vlm.model.vision_model.requires_grad_(False)
        unused = tuple(vlm.unused_backbone_parameters())
        for name, p in vlm.named_parameters():
            if name.startswith(unused):
                p.requires_grad_(False)
        self.model.state_proj.requires_grad_(cfg.train_state_proj)

    # --- batch preparation ---
    @property
    def device(self) -> torch.device:
        return self.model.state_proj.weight.device

    @property
    def vocab_size(self) -> int:
        return self.model.vlm_with_expert.text_model.embed_tokens.num_embeddings

    def prepare_observation(self, batch: dict[str, Any]) -> Prefix:
        """Validate an observation batch and turn it into model space (`smolvla.model.batch`)."""
        return prepare_observation(batch, self.config, self.vocab_size, self.device)

    def prepare_actions(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Target actions padded to max_action_dim (B, chunk, max_action_dim) and the mask of what the loss counts."""
        return prepare_actions(batch, self.config, self.device)

    def sample_noise_and_time(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Flow-matching noise (B, chunk, max_action_dim) and times on the CPU, drawn in that order from `generator`:
        a reproducible draw is one seeded generator, whoever calls. Times are (B,), or with training-time RTC
        (`rtc_training_max_delay` > 0) per chunk step (B, chunk): half the samples get their first d ~ U{1..max}
        steps given (time 0), the others none."""
        cfg = self.config
        noise = torch.randn(batch_size, cfg.chunk_size, cfg.max_action_dim, generator=generator)
        time = self.model.sample_time(batch_size, torch.device("cpu"), generator=generator)
        if cfg.rtc_training_max_delay:  # half the samples plain: the first chunk of an episode has no prefix
            delays = torch.randint(1, cfg.rtc_training_max_delay + 1, (batch_size, 1), generator=generator)
            delays *= torch.rand(batch_size, 1, generator=generator) < 0.5
            time = prefix_time(time, torch.arange(cfg.chunk_size) < delays)
        return noise, time

    # --- training ---
    def compute_loss(
        self,
        batch: dict[str, Any],
        noise: Tensor | None = None,
        time: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Flow-matching MSE over real action dims and non-padded steps (LeRobot 0.6.1's rule; in a mixed-embodiment
        batch, each sample's own robot's dims): a scalar ("mean"), per sample ("none"), or per-sample (sum, count)
        ("sum_count") for callers that average over a larger batch (gradient accumulation, several processes) and
        must weigh each sample by its valid elements."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        prefix = self.prepare_observation(batch)
        actions, valid = self.prepare_actions(batch)
        if noise is None or time is None:
            drawn_noise, drawn_time = self.sample_noise_and_time(actions.shape[0])
            noise = drawn_noise if noise is None else noise
            time = drawn_time if time is None else time
        check_shape("noise", noise, actions.shape)
        check_shape("time", time, actions.shape[:2] if time.ndim == 2 else actions.shape[:1])
        time = time.to(self.device)
        losses = self.model.losses(prefix, actions, noise.to(self.device), time)["losses_raw"]
        if time.ndim == 2:  # training-time RTC: the given steps (t = 0) are inputs, not predictions
            valid = valid * (time > 0)[..., None]
        losses = losses[..., : self.config.action_dim] * valid
        counts = valid.sum(dim=(1, 2))
        if reduction == "mean":
            return losses.sum() / counts.sum().clamp(min=1)
        sums = losses.sum(dim=(1, 2))
        return (sums, counts) if reduction == "sum_count" else sums / counts.clamp(min=1)

    def forward(
        self, batch: dict[str, Any], noise: Tensor | None = None, time: Tensor | None = None, reduction: str = "mean"
    ) -> Tensor:
        """The training loss, so DDP / accelerate wrappers can call the module directly."""
        return self.compute_loss(batch, noise=noise, time=time, reduction=reduction)

    # --- inference ---
    @torch.no_grad()
    def predict_chunk(
        self, batch: dict[str, Any], noise: Tensor | None = None, num_steps: int | None = None,
        inpainting: Inpainting | None = None, action_prefix: ActionPrefix | None = None,
    ) -> Tensor:  # fmt: skip
        """Sample an action chunk (B, chunk_size, action_dim) in model (normalized) space. Real-time chunking:
        `inpainting` guides it towards actions still queued from the previous chunk (run under no_grad, not
        inference_mode: the guidance differentiates through the expert); `action_prefix` gives its first steps,
        for a policy trained for it (`rtc_training_max_delay`), at the cost of a plain chunk."""
        prefix = self.prepare_observation(batch)
        noise, steps = self.sampling_inputs(prefix.state.shape[0], noise, num_steps)
        if action_prefix is not None:
            check_prefix(action_prefix, self.config, noise.shape)
        sampled = self.model.sample(prefix, noise, steps, inpainting=inpainting, action_prefix=action_prefix)
        return sampled[..., : self.config.action_dim]

    def compile_inference(self, mode: str | None = None, whole_chunk: bool = False) -> SmolVLAPolicy:
        """Compile what inference repeats with `torch.compile`. By default the two functions separately — the
        prefix encoder (once per chunk) and the expert's velocity (once per denoising step) — which fuses the
        expert's many small ops and compiles in tens of seconds for any `num_steps`. `whole_chunk=True` compiles
        encoder and the unrolled Euler loop as one graph instead: no Python or guard checks between steps (what
        a small model's chunk is made of on a CPU; docs/benchmarks.md has the numbers), at the price of a compile
        several times longer per distinct `num_steps`. The first call per input shape compiles; a new language length
        recompiles once with dynamic shapes. Numerics match eager within float32 rounding, not bit for bit
        (parity is checked eagerly). Real-time-chunking (guided) sampling uses the per-function compile's pieces
        when present, else eager."""
        if whole_chunk:
            self.model.sample_chunk = torch.compile(self.model.sample_chunk, mode=mode)
        else:
            self.model.encode = torch.compile(self.model.encode, mode=mode)
            self.model.velocity = torch.compile(self.model.velocity, mode=mode)
        return self

    # --- introspection ---
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
