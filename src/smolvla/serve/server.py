"""`smolvla serve`: one policy behind a gRPC port, many robot clients, requests batched when several wait.

Safe by default: binds 127.0.0.1, accepts only the typed messages of `protocol` (no pickle), caps the message size,
checks every observation against the features the policy was trained on before it reaches the model, optionally
requires a shared token (`authorization: Bearer <token>` metadata, compared in constant time) and TLS. A bad request
is answered with a status code naming the problem (INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED) and the
server keeps serving. Each reply carries its timing: queue wait, preprocessing, inference, postprocessing.
"""

from __future__ import annotations

import hmac
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smolvla.errors import ConfigError
from smolvla.model.config import EMPTY_CAMERA_PREFIX, STATE_KEY
from smolvla.model.rectified_flow import Inpainting
from smolvla.processors.normalize import Normalize
from smolvla.serve import protocol as proto
from smolvla.serve.protocol import ProtocolError

MAX_IMAGE_SIDE = 4096
MAX_TASK_CHARS = 2000
# Inputs further than this many standard deviations (or ranges) from the training data are refused: they are no
# robot's reading, and values near float32's limit would overflow inside the network into NaN actions.
MAX_NORMALIZED = 1e3


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
    request_timeout_s: float = 30.0
    rtc_max_guidance: float = 5.0  # real-time chunking's guidance clip β (requests that send prefix actions)

    def validate(self) -> None:
        if not self.policy_path:
            raise ConfigError("set --policy_path=<a pretrained_model directory> to serve")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls_cert and --tls_key")
        if self.max_batch < 1 or self.threads < 1 or self.max_message_mb <= 0:
            raise ConfigError("--max_batch, --threads and --max_message_mb must be positive")


@dataclass
class _Pending:
    observation: dict[str, Any]
    num_steps: int
    seed: int
    prefix: torch.Tensor | None  # RTC: still-queued actions, model space (L, action_dim)
    frozen: int
    enqueued: float
    done: threading.Event
    reply: Any = None
    error: BaseException | None = None


class PolicyService:
    """Validation, batching and inference for one policy (transport-free, so it is testable without gRPC)."""

    def __init__(self, policy, preprocessor, postprocessor, config: ServeConfig):
        self.policy, self.pre, self.post, self.config = policy.eval(), preprocessor, postprocessor, config
        cfg = policy.config
        self.cameras = [k for k in cfg.image_features if not k.startswith(EMPTY_CAMERA_PREFIX)]
        self.state_dim = cfg.state_dim
        self.num_steps = config.num_steps or cfg.num_steps
        # Prefix actions and range checks need the training normalization (identity if the pipeline has none).
        self._normalize = next((step for step in preprocessor.steps if isinstance(step, Normalize)), lambda b: b)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._worker = threading.Thread(target=self._serve_batches, name="smolvla-batcher", daemon=True)
        self._worker.start()

    # --- schema ---
    def info(self) -> Any:
        features = [proto.Feature(name=STATE_KEY, dtype="float32", shape=[self.state_dim])]
        for key in self.cameras:
            _, height, width = self.policy.config.image_features[key].shape
            features.append(proto.Feature(name=key, dtype="uint8", shape=[height, width, 3]))
        return proto.PolicyInfo(
            features=features,
            chunk_size=self.policy.config.chunk_size,
            n_action_steps=self.policy.config.n_action_steps,
            action_dim=self.policy.config.action_dim,
            max_message_bytes=int(self.config.max_message_mb * 2**20),
            policy=str(self.config.policy_path),
        )

    def observation(self, message: Any) -> dict[str, Any]:
        """A raw observation dict (the agent's format) from an `Observation`, checked against the policy."""
        tensors = {}
        for tensor in message.tensors:
            if tensor.name in tensors:
                raise ProtocolError(f"tensor {tensor.name!r} appears twice")
            tensors[tensor.name] = proto.decode_tensor(tensor)
        expected = {STATE_KEY, *self.cameras}
        missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unknown:
            raise ProtocolError(f"observation tensors: missing {missing}, unexpected {unknown}; expected "
                                f"{sorted(expected)}")  # fmt: skip
        state = tensors[STATE_KEY]
        if state.dtype != np.float32 or state.shape != (self.state_dim,):
            raise ProtocolError(f"{STATE_KEY}: expected float32 ({self.state_dim},), got {state.dtype} {state.shape}")
        if not np.isfinite(state).all():
            raise ProtocolError(f"{STATE_KEY} contains NaN or Inf")
        if not message.task or len(message.task) > MAX_TASK_CHARS:
            raise ProtocolError(
                f"the task instruction must have 1..{MAX_TASK_CHARS} characters, got {len(message.task)}"
            )
        self._check_scale(STATE_KEY, state)
        out: dict[str, Any] = {STATE_KEY: torch.from_numpy(state.copy()), "task": message.task}
        for key in self.cameras:
            image = tensors[key]
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ProtocolError(f"camera {key}: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
            if not 0 < image.shape[0] <= MAX_IMAGE_SIDE or not 0 < image.shape[1] <= MAX_IMAGE_SIDE:
                raise ProtocolError(f"camera {key}: image sides must be in 1..{MAX_IMAGE_SIDE}, got {image.shape}")
            out[key] = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0
        return out

    def prefix(self, request: Any) -> tuple[torch.Tensor, int]:
        """Real-time chunking's prefix: (L, action_dim) finite float32 robot actions, 1 <= L <= chunk, normalized
        like the training targets, and 0 <= frozen <= L."""
        actions = proto.decode_tensor(request.prefix_actions)
        chunk, dims = self.policy.config.chunk_size, self.policy.config.action_dim
        if actions.dtype != np.float32 or actions.shape[1:] != (dims,) or not 1 <= len(actions) <= chunk:
            raise ProtocolError(f"prefix_actions: expected float32 (1..{chunk}, {dims}), got {actions.dtype} "
                                f"{actions.shape}")  # fmt: skip
        if not np.isfinite(actions).all():
            raise ProtocolError("prefix_actions contain NaN or Inf")
        if not 0 <= request.prefix_frozen <= len(actions):
            raise ProtocolError(f"prefix_frozen must be in 0..{len(actions)}, got {request.prefix_frozen}")
        return self._check_scale("action", actions), int(request.prefix_frozen)

    def _check_scale(self, key: str, values: np.ndarray) -> torch.Tensor:
        """`values` normalized as the policy will see them, refused when absurdly far from the training data."""
        normalized = self._normalize({key: torch.from_numpy(values.copy())})[key]
        if normalized.abs().max() > MAX_NORMALIZED:
            raise ProtocolError(f"{key} is more than {MAX_NORMALIZED:g} standard deviations (or ranges) from the "
                                f"training data: {values.tolist()[:8]}")  # fmt: skip
        return normalized

    # --- inference ---
    def predict(self, request: Any) -> Any:
        """Validate, wait for a batch slot, return the `PredictReply` (raises ProtocolError on bad input)."""
        observation = self.observation(request.observation)
        steps = request.num_steps or self.num_steps
        if not 1 <= steps <= 100:
            raise ProtocolError(f"num_steps must be in 1..100, got {steps}")
        prefix, frozen = self.prefix(request) if request.HasField("prefix_actions") else (None, 0)
        pending = _Pending(observation, steps, int(request.seed), prefix, frozen, time.perf_counter(),
                           threading.Event())  # fmt: skip
        self._queue.put(pending)
        if not pending.done.wait(self.config.request_timeout_s):
            raise TimeoutError(f"no inference slot within {self.config.request_timeout_s} s")
        if pending.error is not None:
            raise pending.error
        pending.reply.timestep = request.observation.timestep
        return pending.reply

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
            # One inference per step count, RTC-guided requests apart (they cost an extra backward per step).
            for steps, guided in sorted({(p.num_steps, p.prefix is not None) for p in group}):
                self._run([p for p in group if (p.num_steps, p.prefix is not None) == (steps, guided)], steps)

    def _run(self, group: list[_Pending], steps: int) -> None:
        started = time.perf_counter()
        try:
            raw = {k: torch.stack([p.observation[k] for p in group]) for k in group[0].observation if k != "task"}
            raw["task"] = [p.observation["task"] for p in group]
            batch = self.pre(raw)
            prepared = time.perf_counter()
            cfg = self.policy.config
            noise = torch.stack([
                torch.randn(cfg.chunk_size, cfg.max_action_dim,
                            generator=torch.Generator().manual_seed(p.seed) if p.seed else None)
                for p in group
            ])  # fmt: skip
            inpainting = None
            if group[0].prefix is not None:
                inpainting = Inpainting.from_prefixes(
                    [p.prefix for p in group],
                    [p.frozen for p in group],
                    cfg.chunk_size,
                    cfg.max_action_dim,
                    self.config.rtc_max_guidance,
                )
            with torch.no_grad() if inpainting is not None else torch.inference_mode():  # guidance needs autograd
                chunk = self.policy.predict_chunk(batch, noise=noise, num_steps=steps, inpainting=inpainting)
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


def _handlers(service: PolicyService, token: str | None):
    import grpc

    def authorize(context) -> None:
        if token is None:
            return
        sent = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (authorization: Bearer <token>)")

    def unary(kind, handle):
        def call(payload: bytes, context):
            authorize(context)
            try:
                return handle(proto.decode(kind, payload)).SerializeToString()
            except ProtocolError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except TimeoutError as e:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            except Exception as e:
                context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

        return grpc.unary_unary_rpc_method_handler(call)  # raw bytes in and out: we parse, grpc only transports

    return grpc.method_handlers_generic_handler(
        proto.SERVICE,
        {
            "Predict": unary(proto.PredictRequest, service.predict),
            "Info": unary(proto.InfoRequest, lambda _: service.info()),
        },
    )


class PolicyServer:
    """The gRPC server around a `PolicyService`; `start()` returns the bound port."""

    def __init__(self, config: ServeConfig, service: PolicyService | None = None):
        config.validate()
        self.config = config
        if service is None:
            from smolvla.policy import SmolVLAPolicy
            from smolvla.processors import load_processors

            policy = SmolVLAPolicy.from_pretrained(config.policy_path, device=config.device)
            service = PolicyService(policy, *load_processors(config.policy_path, device=config.device), config)
        self.service = service
        self._server = None
        self.port: int | None = None

    def start(self) -> int:
        import grpc

        limit = int(self.config.max_message_mb * 2**20)
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.config.threads), options=options)
        server.add_generic_rpc_handlers((_handlers(self.service, self.config.token),))
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert:
            with open(self.config.tls_key, "rb") as key, open(self.config.tls_cert, "rb") as cert:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise ConfigError(f"cannot bind {address}")
        server.start()
        self._server = server
        return self.port

    def wait(self) -> None:
        self._server.wait_for_termination()

    def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
        self.service.close()
