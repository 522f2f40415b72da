"""The policy service behind `smolvla serve`, transport-free (so it is testable without gRPC): request validation
against the features the policy was trained on, batching of concurrent requests, inference and timing.

A bad request raises `ProtocolError` naming the problem; one failing batch answers each of its waiters with the error
and the service keeps serving.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smolvla.errors import ConfigError
from smolvla.keys import ACTION_KEY, IMAGE_PREFIX, STATE_KEY, TASK_KEY
from smolvla.model.rectified_flow import ActionPrefix, Inpainting
from smolvla.processors import ImagesToFloat, Normalize, RenameObservations
from smolvla.processors.factory import robot_features, robot_names
from smolvla.runtime import check_runtime
from smolvla.serve import protocol as proto
from smolvla.serve.protocol import ProtocolError

MAX_IMAGE_SIDE = 4096
MAX_TASK_CHARS = 2000
# Inputs further than this many standard deviations (or ranges) from the training data are refused: they are no
# robot's reading, and values near float32's limit would overflow inside the network into NaN actions.
MAX_NORMALIZED = 1e3
MAX_STEPS = 100
RTC_MODES = ("guided", "trained")  # how a request's queued actions shape its chunk (empty on the wire: guided)


@dataclass
class ServeConfig:
    policy_path: str = ""  # the checkpoint's pretrained_model directory
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the port to the network: use --token and TLS then
    port: int = 50051  # 0 picks a free port (printed)
    device: str = "cpu"
    num_steps: int | None = None  # default denoising steps (a request may ask for others)
    token: str | None = None  # shared secret clients must send; none = no authentication
    tls_cert: str | None = None  # PEM certificate chain and key: serve over TLS
    tls_key: str | None = None
    max_message_mb: float = 16.0
    max_batch: int = 8  # requests answered by one batched inference
    batch_window_ms: float = 2.0  # how long the first waiting request waits for company
    threads: int = 16  # gRPC handler threads (each waiting request holds one)
    max_pending: int = 16  # requests validated, queued or in inference at once; more are refused (busy)
    request_timeout_s: float = 30.0
    rtc_max_guidance: float = 5.0  # real-time chunking's guidance clip β (requests that send queued actions)
    # robot key → the key the checkpoint expects, LeRobot's JSON form: lets robots keep their own camera names
    rename_map: dict[str, str] = field(default_factory=dict)
    embodiment: str | None = None  # which robot's processors, for a policy trained on several (embodiments.json)
    runtime: str = "torch"  # torch | onnx | onnx_int8 (exported once beside the checkpoint, then reused)

    def validate(self) -> None:
        if not self.policy_path:
            raise ConfigError("set --policy_path=<a pretrained_model directory> to serve")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls_cert and --tls_key")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535 (0 picks a free one), got {self.port}")
        positive = {"max_batch": self.max_batch, "threads": self.threads, "max_pending": self.max_pending,
                    "max_message_mb": self.max_message_mb, "request_timeout_s": self.request_timeout_s}  # fmt: skip
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"--{name} must be positive, got {value}")
        if self.batch_window_ms < 0 or self.rtc_max_guidance <= 0:
            raise ConfigError("--batch_window_ms must be >= 0 and --rtc_max_guidance > 0")
        check_runtime(self.runtime)
        if self.num_steps is not None and not 1 <= self.num_steps <= MAX_STEPS:
            raise ConfigError(f"--num_steps must be in 1..{MAX_STEPS}, got {self.num_steps}")


@dataclass
class _Pending:
    observation: dict[str, Any]
    num_steps: int
    seed: int
    queued: torch.Tensor | None  # RTC: still-queued actions, model space (L, action_dim)
    frozen: int
    rtc: str  # "" (no queued actions) or one of RTC_MODES
    enqueued: float
    done: threading.Event
    is_active: Callable[[], bool]  # False once the client gave up (timed out, cancelled, disconnected)
    reply: Any = None
    error: BaseException | None = None


class ServerBusyError(Exception):
    """Every request slot is taken: the client should back off and retry."""


class PolicyService:
    """Validation, batching and inference for one policy (transport-free, so it is testable without gRPC)."""

    def __init__(self, policy, preprocessor, postprocessor, config: ServeConfig):
        self.policy, self.pre, self.post, self.config = policy.eval(), preprocessor, postprocessor, config
        cfg = policy.config
        # The robot speaks the names the checkpoint's preprocessor renames from (`--rename_map` at training), or
        # this server's `--rename_map` maps onto: requests are checked, and `Info` answered, in those names.
        self.rename = RenameObservations(config.rename_map)
        robot_name = robot_names(preprocessor, config.rename_map)
        spec = robot_features(preprocessor, postprocessor, cfg)  # one robot of a several-robot policy: its own
        self.camera_shapes = {robot_name(k): shape for k, shape in spec.items() if k.startswith(IMAGE_PREFIX)}
        self.cameras = list(self.camera_shapes)
        self.state_key = robot_name(STATE_KEY)
        self.state_dim, self.action_dim = spec[STATE_KEY][0], spec[ACTION_KEY][0]
        self.num_steps = config.num_steps or cfg.num_steps
        self.to_float = ImagesToFloat()
        try:  # RTC's queued actions are normalized like the training targets (the pipeline's own normalizer)
            self._normalize_actions = preprocessor.step(Normalize)
        except KeyError:  # a pipeline without normalization: the policy works in robot units
            self._normalize_actions = lambda batch: batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        # Each admitted request holds a slot from validation until its answer (or abandonment) is handled, so the
        # memory of waiting requests is bounded by max_pending × max_message_mb whatever the clients do.
        self._slots = threading.BoundedSemaphore(config.max_pending)
        self._worker = threading.Thread(target=self._serve_batches, name="smolvla-batcher", daemon=True)
        self._worker.start()

    # --- schema ---
    def info(self) -> Any:
        features = [proto.Feature(name=self.state_key, dtype="float32", shape=[self.state_dim])]
        for key in self.cameras:
            _, height, width = self.camera_shapes[key]
            features.append(proto.Feature(name=key, dtype="uint8", shape=[height, width, 3]))
        return proto.PolicyInfo(
            features=features,
            chunk_size=self.policy.config.chunk_size,
            n_action_steps=self.policy.config.n_action_steps,
            action_dim=self.action_dim,
            max_message_bytes=int(self.config.max_message_mb * 2**20),
            policy=str(self.config.policy_path),
            rtc_training_max_delay=self.policy.config.rtc_training_max_delay,
        )

    def observation(self, message: Any) -> dict[str, Any]:
        """A raw observation (robot units, uint8 frames) from an `Observation`, checked against the policy's
        features; normalization and its range check happen once, in `_run`, through the preprocessor."""
        tensors = {}
        for tensor in message.tensors:
            if tensor.name in tensors:
                raise ProtocolError(f"tensor {tensor.name!r} appears twice")
            tensors[tensor.name] = proto.decode_tensor(tensor)
        expected = {self.state_key, *self.cameras}
        missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unknown:
            raise ProtocolError(f"observation tensors: missing {missing}, unexpected {unknown}; expected "
                                f"{sorted(expected)}")  # fmt: skip
        state = tensors[self.state_key]
        if state.dtype != np.float32 or state.shape != (self.state_dim,):
            raise ProtocolError(
                f"{self.state_key}: expected float32 ({self.state_dim},), got {state.dtype} {state.shape}"
            )
        if not np.isfinite(state).all():
            raise ProtocolError(f"{self.state_key} contains NaN or Inf")
        if not message.task or len(message.task) > MAX_TASK_CHARS:
            raise ProtocolError(
                f"the task instruction must have 1..{MAX_TASK_CHARS} characters, got {len(message.task)}"
            )
        out: dict[str, Any] = {self.state_key: torch.from_numpy(state.copy()), TASK_KEY: message.task}
        for key in self.cameras:
            image = tensors[key]
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ProtocolError(f"camera {key}: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
            if not 0 < image.shape[0] <= MAX_IMAGE_SIDE or not 0 < image.shape[1] <= MAX_IMAGE_SIDE:
                raise ProtocolError(f"camera {key}: image sides must be in 1..{MAX_IMAGE_SIDE}, got {image.shape}")
            out[key] = torch.from_numpy(image.copy())
        return out

    def queued_actions(self, request: Any) -> tuple[torch.Tensor, int, str]:
        """Real-time chunking's queued actions: (L, action_dim) finite float32 robot actions, 1 <= L <= chunk,
        normalized like the training targets, 0 <= frozen_steps <= L, and the RTC mode: guided (any PyTorch-served
        policy), or trained (a policy trained with `rtc_training_max_delay` >= frozen_steps)."""
        mode = request.rtc_mode or "guided"
        if mode not in RTC_MODES:
            raise ProtocolError(f"rtc_mode must be one of {RTC_MODES}, got {mode!r}")
        if not getattr(self.policy, f"supports_{mode}_rtc", True):
            raise ProtocolError(
                f"this server's runtime cannot run {mode} real-time chunking: serve with --runtime=torch, or send "
                "no queued_actions"
            )
        actions = proto.decode_tensor(request.queued_actions)
        chunk, dims = self.policy.config.chunk_size, self.action_dim
        if actions.dtype != np.float32 or actions.shape[1:] != (dims,) or not 1 <= len(actions) <= chunk:
            raise ProtocolError(f"queued_actions: expected float32 (1..{chunk}, {dims}), got {actions.dtype} "
                                f"{actions.shape}")  # fmt: skip
        if not np.isfinite(actions).all():
            raise ProtocolError("queued_actions contain NaN or Inf")
        if not 0 <= request.frozen_steps <= len(actions):
            raise ProtocolError(f"frozen_steps must be in 0..{len(actions)}, got {request.frozen_steps}")
        trained = self.policy.config.rtc_training_max_delay
        if mode == "trained" and not trained:
            raise ProtocolError("rtc_mode trained: this policy was not trained for training-time real-time chunking "
                                "(rtc_training_max_delay is 0); use guided")  # fmt: skip
        if mode == "trained" and not 0 < request.frozen_steps <= trained:
            raise ProtocolError(f"rtc_mode trained: this policy was trained with 1..{trained} given steps "
                                f"(rtc_training_max_delay), got frozen_steps {request.frozen_steps}")  # fmt: skip
        normalized = self._normalize_actions({ACTION_KEY: torch.from_numpy(actions.copy())})[ACTION_KEY]
        if normalized.abs().max() > MAX_NORMALIZED:
            raise ProtocolError(_too_far("queued_actions", actions))
        return normalized, int(request.frozen_steps), mode

    # --- inference ---
    def predict(self, request: Any, is_active: Callable[[], bool] = lambda: True) -> Any:
        """Validate, wait for a batch slot, return the `PredictReply`. Raises ProtocolError on bad input and
        ServerBusyError when `max_pending` requests are already admitted. `is_active` tells whether the client still
        waits: a request whose client left is dropped before inference."""
        if not self._slots.acquire(blocking=False):
            raise ServerBusyError(f"{self.config.max_pending} requests are already waiting or running; retry later")
        try:
            observation = self.observation(request.observation)
            steps = request.num_steps or self.num_steps
            if not 1 <= steps <= MAX_STEPS:
                raise ProtocolError(f"num_steps must be in 1..{MAX_STEPS}, got {steps}")
            queued, frozen, rtc = self.queued_actions(request) if request.HasField("queued_actions") else (None, 0, "")
        except BaseException:
            self._slots.release()
            raise
        waiting = threading.Event()
        abandoned = threading.Event()
        pending = _Pending(observation, steps, int(request.seed), queued, frozen, rtc, time.perf_counter(), waiting,
                           lambda: not abandoned.is_set() and is_active())  # fmt: skip
        self._queue.put(pending)
        if not waiting.wait(self.config.request_timeout_s):
            abandoned.set()  # the batcher drops it (and frees its slot) if it has not started on it yet
            raise TimeoutError(f"no inference slot within {self.config.request_timeout_s} s")
        error, reply = pending.error, pending.reply
        # Break the cycle frame → pending → error → traceback → frame before raising: it would keep this request's
        # decoded images alive until a full garbage collection, and a server answering many abandoned or bad
        # requests would grow by their size each time.
        pending.error = pending.reply = None
        del pending, observation
        if error is not None:
            raise error
        reply.timestep = request.observation.timestep
        return reply

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _serve_batches(self) -> None:
        window = self.config.batch_window_ms / 1000
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, deadline = [first], time.perf_counter() + window
            while len(group) < self.config.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                group.append(item)
            for p in group:
                if not p.is_active():  # its client left: skip the inference, and let its handler return now
                    p.error = TimeoutError("the client left before its request was served")
                    p.done.set()
                    self._slots.release()
            group = [p for p in group if not p.done.is_set()]
            # One inference per step count and RTC mode (guided requests cost an extra backward per step).
            for steps, rtc in sorted({(p.num_steps, p.rtc) for p in group}):
                part = [p for p in group if (p.num_steps, p.rtc) == (steps, rtc)]
                try:
                    self._run(part, steps)
                finally:
                    for _ in part:
                        self._slots.release()

    def _preprocess(self, group: list[_Pending]) -> tuple[list[_Pending], dict[str, Any]]:
        """The group's observations through the preprocessor in one batch; a request whose normalized state is
        absurdly far from the training data (no robot's reading; near float32's limit it would overflow into NaN
        actions) is answered with an error and dropped from the batch."""
        raw = {k: torch.stack([p.observation[k] for p in group]) for k in group[0].observation if k != TASK_KEY}
        raw[TASK_KEY] = [p.observation[TASK_KEY] for p in group]
        batch = self.pre(self.rename(self.to_float(raw)))
        far = (batch[STATE_KEY].abs().amax(dim=-1) > MAX_NORMALIZED).tolist()
        if not any(far):
            return group, batch
        for p, bad in zip(group, far, strict=True):
            if bad:
                p.error = ProtocolError(_too_far(self.state_key, p.observation[self.state_key].numpy()))
                p.done.set()
        keep = [i for i, bad in enumerate(far) if not bad]
        batch = {k: v[keep] if isinstance(v, torch.Tensor) else [v[i] for i in keep] for k, v in batch.items()}
        return [group[i] for i in keep], batch

    def _run(self, group: list[_Pending], steps: int) -> None:
        started = time.perf_counter()
        try:
            group, batch = self._preprocess(group)
            if not group:
                return
            prepared = time.perf_counter()
            cfg = self.policy.config
            noise = torch.stack([
                torch.randn(cfg.chunk_size, cfg.max_action_dim,
                            generator=torch.Generator().manual_seed(p.seed) if p.seed else None)
                for p in group
            ])  # fmt: skip
            queued, frozen = [p.queued for p in group], [p.frozen for p in group]
            rtc, width = group[0].rtc, cfg.max_action_dim
            inpainting = action_prefix = None
            if rtc == "guided":
                inpainting = Inpainting.from_queued(queued, frozen, cfg.chunk_size, width, self.config.rtc_max_guidance)
            elif rtc == "trained":
                action_prefix = ActionPrefix.from_queued(queued, frozen, cfg.chunk_size, width)
            with torch.no_grad() if inpainting is not None else torch.inference_mode():  # guidance needs autograd
                chunk = self.policy.predict_chunk(batch, noise=noise, num_steps=steps, inpainting=inpainting,
                                                  action_prefix=action_prefix)  # fmt: skip
            inferred = time.perf_counter()
            actions = self.post({"action": chunk})["action"].float().cpu().numpy()
            finished = time.perf_counter()
            finite = np.isfinite(actions).all(axis=(1, 2))
        except Exception as e:  # one bad batch must not stop the server: every waiter gets the error
            for p in group:
                p.error = e
                p.done.set()
            return
        for i, p in enumerate(group):
            if not finite[i]:  # never send NaN to a robot
                p.error = RuntimeError("the policy produced non-finite actions for this observation")
                p.done.set()
                continue
            timing = proto.Timing(
                queue_ms=1000 * (started - p.enqueued), preprocess_ms=1000 * (prepared - started),
                inference_ms=1000 * (inferred - prepared), postprocess_ms=1000 * (finished - inferred),
                batch_size=len(group),
            )  # fmt: skip
            p.reply = proto.PredictReply(actions=proto.encode_tensor("action", actions[i]), timing=timing)
            p.done.set()


def _too_far(key: str, values: np.ndarray) -> str:
    return (f"{key} is more than {MAX_NORMALIZED:g} standard deviations (or ranges) from the training data: "
            f"{values.tolist()[:8]}")  # fmt: skip
