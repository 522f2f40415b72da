"""`PolicyClient`: the robot side of the wire — typed requests, token and TLS, timeouts, reconnect with backoff."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from smolvla.keys import STATE_KEY
from smolvla.serve import protocol as proto


@dataclass
class ChunkReply:
    actions: np.ndarray  # (chunk, action_dim), unnormalized robot actions
    timestep: int  # the observation's timestep the chunk starts at
    timing: dict[str, float]  # server-side queue/preprocess/inference/postprocess ms and batch size
    round_trip_ms: float


@dataclass
class PolicyClient:
    address: str = "127.0.0.1:50051"
    token: str | None = None
    tls_root_cert: str | None = None  # PEM of the CA that signed the server's certificate: connect over TLS
    timeout_s: float = 10.0
    retries: int = 5  # on UNAVAILABLE (server down or restarting): exponential backoff from `backoff_s`
    backoff_s: float = 0.1
    client_id: str = "robot"
    _channel: Any = field(default=None, init=False, repr=False)

    def _connect(self) -> None:
        if self.tls_root_cert:
            with open(self.tls_root_cert, "rb") as f:
                self._channel = grpc.secure_channel(self.address, grpc.ssl_channel_credentials(f.read()))
        else:
            self._channel = grpc.insecure_channel(self.address)

    def _call(self, method: str, request: Any, reply: Any) -> Any:
        if self._channel is None:
            self._connect()
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else None
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            stub = self._channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                             response_deserializer=reply.FromString)  # fmt: skip
            try:
                return stub(request, timeout=self.timeout_s, metadata=metadata)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
        raise AssertionError("unreachable")

    def info(self) -> Any:
        return self._call(proto.INFO, proto.InfoRequest(), proto.PolicyInfo)

    def predict(
        self, state: np.ndarray, images: dict[str, np.ndarray], task: str, timestep: int = 0, *,
        num_steps: int = 0, seed: int = 0, queued_actions: np.ndarray | None = None, frozen_steps: int = 0,
        rtc_mode: str = "guided",
    ) -> ChunkReply:  # fmt: skip
        """One chunk for an observation: state (d,) float32, images {feature key: uint8 (H, W, 3)}. With
        `queued_actions` ((L, action_dim) actions still queued from `timestep` on, of which `frozen_steps` execute
        before the chunk can arrive) the server applies real-time chunking so the chunk continues them smoothly:
        `rtc_mode` guided (inpainting), or trained (the frozen steps given to a policy trained for it)."""
        tensors = [proto.encode_tensor(STATE_KEY, np.asarray(state, dtype=np.float32))]
        tensors += [proto.encode_tensor(key, np.asarray(image, dtype=np.uint8)) for key, image in images.items()]
        request = proto.PredictRequest(
            observation=proto.Observation(tensors=tensors, task=task, timestep=timestep, timestamp=time.time()),
            client_id=self.client_id, num_steps=num_steps, seed=seed,
        )  # fmt: skip
        if queued_actions is not None:
            request.queued_actions.CopyFrom(
                proto.encode_tensor("queued_actions", np.asarray(queued_actions, dtype=np.float32))
            )
            request.frozen_steps, request.rtc_mode = frozen_steps, rtc_mode
        started = time.perf_counter()
        reply = self._call(proto.PREDICT, request, proto.PredictReply)
        timing = {f.name: getattr(reply.timing, f.name) for f in reply.timing.DESCRIPTOR.fields}
        return ChunkReply(proto.decode_tensor(reply.actions), reply.timestep, timing,
                          1000 * (time.perf_counter() - started))  # fmt: skip

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
