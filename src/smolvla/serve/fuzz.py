"""A fuzzer for the policy server's wire protocol: random bytes, mutated valid requests and well-formed messages with
hostile contents, sent raw. A robust server answers each with a status code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
UNAUTHENTICATED, or OK when the mutation happened to leave a valid request) and keeps serving; INTERNAL or UNKNOWN
means an input reached code that did not expect it.

    python -m smolvla.serve.fuzz --server=127.0.0.1:50051 [--token=...] [--count=5000] [--seed=0]
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np

from smolvla.serve import protocol as proto
from smolvla.serve.client import PolicyClient

HOSTILE_DTYPES = [*proto.DTYPES, "object", "", "float32\x00", "<f4", "complex64", "float128", "str", "💥"]
UNEXPECTED = ("INTERNAL", "UNKNOWN")  # statuses a well-validated server never returns to bad input


def valid_request(info: Any, rng: np.random.Generator) -> Any:
    """A request the server accepts: every feature it lists, with the right dtype and shape."""
    tensors = []
    for feature in info.features:
        shape = list(feature.shape)
        if feature.dtype == "uint8":
            tensors.append(proto.encode_tensor(feature.name, rng.integers(0, 256, shape, dtype=np.uint8)))
        else:
            tensors.append(proto.encode_tensor(feature.name, rng.normal(size=shape).astype(feature.dtype)))
    observation = proto.Observation(tensors=tensors, task="open the window", timestep=3)
    return proto.PredictRequest(observation=observation, num_steps=1, seed=1)


def _hostile_tensor(rng: random.Random, name: str) -> Any:
    dims = rng.randint(0, 6)
    shape = [rng.choice([0, 1, 3, 4, 64, -1, -(2**40), 2**31, 2**62, rng.randint(0, 100)]) for _ in range(dims)]
    data = rng.randbytes(rng.choice([0, 1, 3, 12, 48, rng.randint(0, 5000)]))
    return proto.Tensor(name=name, dtype=rng.choice(HOSTILE_DTYPES), shape=shape, data=data)


def _structured(base: Any, info: Any, rng: random.Random) -> Any:
    """A well-formed message whose contents lie: wrong dtypes, shapes, byte counts, names, numbers."""
    request = proto.PredictRequest()
    request.CopyFrom(base)
    tensors = request.observation.tensors
    choice = rng.randrange(9)
    names = [f.name for f in info.features] + ["", "observation.state.x", "action", "\x00", "a" * 10_000]
    if choice == 0 and len(tensors):
        tensors[rng.randrange(len(tensors))].CopyFrom(_hostile_tensor(rng, rng.choice(names)))
    elif choice == 1:
        tensors.add().CopyFrom(_hostile_tensor(rng, rng.choice(names)))
    elif choice == 2 and len(tensors):
        del tensors[rng.randrange(len(tensors))]
    elif choice == 3:
        request.num_steps = rng.choice([-1, 0, 101, 2**31 - 1, -(2**31)])
        state = next(t for t in tensors if t.name == "observation.state")
        state.data = np.full(len(state.data) // 4, rng.choice([1e38, -1e30, 1e6, 3.0]), np.float32).tobytes()
        request.seed = rng.choice([-1, 2**63 - 1, -(2**63)])
    elif choice == 4:
        request.observation.task = rng.choice(["", "\x00" * 10, "🤖" * 1000, "a" * 200_000])
    elif choice == 5:
        request.queued_actions.CopyFrom(_hostile_tensor(rng, "queued_actions"))
        request.frozen_steps = rng.choice([-5, 0, 1, 3, 2**31 - 1])
    elif choice == 6:  # right-shaped queued actions with bad values or frozen count
        values = np.full(
            (rng.randint(0, 3 * info.chunk_size), info.action_dim), rng.choice([0.0, np.nan, np.inf, 1e38])
        )
        request.queued_actions.CopyFrom(proto.encode_tensor("queued_actions", values.astype(np.float32)))
        request.frozen_steps = rng.choice([-1, 0, 1, len(values), len(values) + 1])
    elif choice == 7 and len(tensors):  # a valid tensor in another dtype, or with values that are not numbers
        t = tensors[rng.randrange(len(tensors))]
        t.data = rng.choice([b"\xff" * len(t.data), b"\x7f\xc0\x00\x00" * (len(t.data) // 4)])
        t.dtype = rng.choice([t.dtype, "float16", "float64", "int64", "bool"])
    else:
        request.observation.timestep = rng.choice([-1, 2**63 - 1])
        request.client_id = rng.choice(["", "x" * 100_000])
    return request


def messages(info: Any, count: int, seed: int = 0) -> Iterator[tuple[str, str, bytes]]:
    """(kind, method, payload) for `count` hostile calls: a third random bytes, a third byte-mutated valid requests,
    a third structured lies; some aimed at `Info`."""
    rng = random.Random(seed)
    base = valid_request(info, np.random.default_rng(seed))
    raw = base.SerializeToString()
    for i in range(count):
        method = proto.INFO if rng.random() < 0.05 else proto.PREDICT
        kind = ("random", "mutated", "structured")[i % 3]
        if kind == "random":
            payload = rng.randbytes(rng.choice([0, 1, 7, 64, rng.randint(0, 20_000)]))
        elif kind == "mutated":
            data = bytearray(raw)
            for _ in range(rng.randint(1, 12)):
                op, at = rng.randrange(4), rng.randrange(len(data))
                if op == 0:
                    data[at] ^= 1 << rng.randrange(8)
                elif op == 1:
                    data = data[:at]
                elif op == 2:
                    data[at:at] = rng.randbytes(rng.randint(1, 16))
                else:
                    data[at : at + 8] = b""
                if not data:
                    break
            payload = bytes(data)
        else:
            payload = _structured(base, info, rng).SerializeToString()
        yield kind, method, payload


def run(address: str, count: int, token: str | None = None, seed: int = 0, timeout_s: float = 30.0) -> dict:
    """Send the messages; return status counts per kind, the unexpected ones, and whether a valid request still
    succeeds afterwards."""
    client = PolicyClient(address=address, token=token)
    info = client.info()
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 2**20)])
    metadata = [("authorization", f"Bearer {token}")] if token else None
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    unexpected = []
    try:
        for kind, method, payload in messages(info, count, seed):
            try:
                answer = channel.unary_unary(method)(payload, timeout=timeout_s, metadata=metadata)
                code = "OK"
                if method == proto.PREDICT and not np.isfinite(proto.decode_tensor(proto.PredictReply.FromString(
                        answer).actions)).all():  # fmt: skip
                    unexpected.append({"kind": kind, "status": "OK with non-finite actions"})
            except grpc.RpcError as e:
                code = e.code().name
                if code in UNEXPECTED:
                    unexpected.append({"kind": kind, "status": code, "details": e.details()[:300]})
            counts[kind][code] += 1
        reply = client.predict(*sample_observation(info), "open the window", num_steps=1)
    finally:
        channel.close()
        client.close()
    return {
        "messages": count,
        "statuses": {kind: dict(c) for kind, c in counts.items()},
        "unexpected": unexpected,
        "still_serving": reply.actions.shape == (info.chunk_size, info.action_dim),
    }


def sample_observation(info: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    request = valid_request(info, np.random.default_rng(0))
    tensors = {t.name: proto.decode_tensor(t) for t in request.observation.tensors}
    state = tensors.pop("observation.state")
    return state, tensors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--token", default=None)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.server, args.count, args.token, args.seed)
    for kind, statuses in result["statuses"].items():
        print(f"{kind:10s} {statuses}")
    for item in result["unexpected"][:20]:
        print(f"unexpected: {item}")
    print(f"still serving: {result['still_serving']}")
    return 0 if result["still_serving"] and not result["unexpected"] else 1


if __name__ == "__main__":
    sys.exit(main())
