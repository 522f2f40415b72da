"""`smolvla serve`: one policy behind a gRPC port, many robot clients, requests batched when several wait.

Safe by default: binds 127.0.0.1, accepts only the typed messages of `protocol` (no pickle), caps the message size,
checks every observation against the features the policy was trained on before it reaches the model, optionally
requires a shared token (`authorization: Bearer <token>` metadata, compared in constant time) and TLS. A bad request
is answered with a status code naming the problem (INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED) and the
server keeps serving. Each reply carries its timing: queue wait, preprocessing, inference, postprocessing.
"""

from __future__ import annotations

import hmac
from concurrent import futures

import grpc

from smolvla.errors import ConfigError
from smolvla.model.checkpoint import WEIGHTS_NAME, pretrained_dir, weights_sha256
from smolvla.processors import load_processors
from smolvla.runtime import load_policy
from smolvla.serve import protocol as proto
from smolvla.serve.protocol import ProtocolError
from smolvla.serve.service import PolicyService, ServeConfig, ServerBusyError

__all__ = ["PolicyServer", "PolicyService", "ServeConfig"]


def _handlers(service: PolicyService, token: str | None):
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
                return handle(proto.decode(kind, payload), context.is_active).SerializeToString()
            except ProtocolError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except ServerBusyError as e:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            except TimeoutError as e:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            except Exception as e:
                context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

        return grpc.unary_unary_rpc_method_handler(call)  # raw bytes in and out: we parse, grpc only transports

    return grpc.method_handlers_generic_handler(
        proto.SERVICE,
        {
            "Predict": unary(proto.PredictRequest, service.predict),
            "Info": unary(proto.InfoRequest, lambda _request, _is_active: service.info()),
        },
    )


class PolicyServer:
    """The gRPC server around a `PolicyService`; `start()` returns the bound port."""

    def __init__(self, config: ServeConfig, service: PolicyService | None = None):
        config.validate()
        self.config = config
        if service is None:
            policy = load_policy(config.policy_path, config.runtime, config.device)
            processors = load_processors(config.policy_path, device=config.device, embodiment=config.embodiment)
            service = PolicyService(policy, *processors, config)
        self.service = service
        self._server = None
        self.port: int | None = None

    def describe(self) -> str:
        """The startup line: where, how clients authenticate, and which weights answer."""
        auth = "token required" if self.config.token else "no authentication"
        tls = "TLS" if self.config.tls_cert else "no TLS"
        weights = pretrained_dir(self.config.policy_path)
        sha = weights_sha256(weights)[:12] if (weights / WEIGHTS_NAME).is_file() else "unknown"
        where = f"{self.config.host}:{self.port} ({auth}, {tls}, runtime {self.config.runtime})"
        return f"serving {weights} (weights sha256 {sha}) on {where}"

    def start(self) -> int:
        limit = int(self.config.max_message_mb * 2**20)
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # gRPC shares a port between processes by default (SO_REUSEPORT): a second server, perhaps a stale one
            # with another checkpoint or no token, would silently answer some of the requests. Refuse instead.
            ("grpc.so_reuseport", 0),
        ]
        # gRPC would otherwise queue any number of calls (each holding its message) for the handler threads: beyond
        # the admitted requests and one per thread for cheap calls (Info), it answers RESOURCE_EXHAUSTED itself.
        pool = futures.ThreadPoolExecutor(max_workers=self.config.threads)
        server = grpc.server(
            pool, options=options, maximum_concurrent_rpcs=self.config.max_pending + self.config.threads
        )
        server.add_generic_rpc_handlers((_handlers(self.service, self.config.token),))
        address = f"{self.config.host}:{self.config.port}"
        try:
            if self.config.tls_cert:
                with open(self.config.tls_key, "rb") as key, open(self.config.tls_cert, "rb") as cert:
                    credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises where older versions returned 0
            self.port = 0
        if not self.port:
            raise ConfigError(f"cannot listen on {address}: the port is in use (another server?) or not permitted")
        server.start()
        self._server = server
        return self.port

    def wait(self) -> None:
        self._server.wait_for_termination()

    def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
        self.service.close()
