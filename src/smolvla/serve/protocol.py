"""The policy server's wire format: typed protobuf messages, no pickle anywhere.

LeRobot's async stack pickles observations and actions over an insecure channel, so anyone who can reach the port
can run code on the robot computer or the GPU server. Here every message is a protobuf whose tensors are raw
little-endian bytes with an explicit dtype (from a short allow-list) and shape; decoding checks that the byte count
matches, the shape is small and sane, and nothing else is interpreted. The schema is built at import time from
descriptors (no generated code to keep in sync with the protobuf runtime):

    Tensor        name, dtype, shape[], data (bytes)
    Observation   tensors[], task, timestep, timestamp
    PredictRequest   observation, client_id, num_steps (0 = the policy's), seed (0 = random noise),
                     queued_actions (Tensor, optional: real-time chunking's still-queued actions, (L, action_dim)
                     from the observation's timestep on), frozen_steps (how many of them execute during inference),
                     rtc_mode ("guided" (default): guided inpainting; "trained": the frozen steps are given to a
                     policy trained for it, `rtc_training_max_delay`)
    PredictReply     actions (Tensor, unnormalized, (chunk, action_dim)), timestep, timing
    Timing        queue_ms, preprocess_ms, inference_ms, postprocess_ms, batch_size
    InfoRequest / PolicyInfo   the features the server expects, chunk size, action dim, message size limit, the
                     training-time RTC delay the policy was trained for (0 = none)

Service `smolvla.serve.PolicyService`: unary `Info` and `Predict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.message import DecodeError

from smolvla.errors import SmolVLAError

PACKAGE = "smolvla.serve"
SERVICE = f"{PACKAGE}.PolicyService"
PREDICT = f"/{SERVICE}/Predict"
INFO = f"/{SERVICE}/Info"

# The only dtypes accepted on the wire (name → numpy little-endian dtype).
DTYPES = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "float16": np.dtype("<f2"),
    "uint8": np.dtype("u1"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
}
MAX_DIMS = 4
MAX_ELEMENTS = 1 << 26  # 64 M elements: far above any camera frame, far below what could exhaust memory

_T = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _T.TYPE_STRING,
    "bytes": _T.TYPE_BYTES,
    "int64": _T.TYPE_INT64,
    "int32": _T.TYPE_INT32,
    "double": _T.TYPE_DOUBLE,
}
_MESSAGES = {
    "Tensor": [("name", "string"), ("dtype", "string"), ("shape", "int64*"), ("data", "bytes")],
    "Observation": [("tensors", "Tensor*"), ("task", "string"), ("timestep", "int64"), ("timestamp", "double")],
    "PredictRequest": [
        ("observation", "Observation"),
        ("client_id", "string"),
        ("num_steps", "int32"),
        ("seed", "int64"),
        ("queued_actions", "Tensor"),
        ("frozen_steps", "int32"),
        ("rtc_mode", "string"),
    ],
    "Timing": [
        ("queue_ms", "double"),
        ("preprocess_ms", "double"),
        ("inference_ms", "double"),
        ("postprocess_ms", "double"),
        ("batch_size", "int32"),
    ],
    "PredictReply": [("actions", "Tensor"), ("timestep", "int64"), ("timing", "Timing")],
    "InfoRequest": [],
    "Feature": [("name", "string"), ("dtype", "string"), ("shape", "int64*")],
    "PolicyInfo": [
        ("features", "Feature*"),
        ("chunk_size", "int32"),
        ("n_action_steps", "int32"),
        ("action_dim", "int32"),
        ("max_message_bytes", "int64"),
        ("policy", "string"),
        ("rtc_training_max_delay", "int32"),
    ],
}


def _build() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(name="smolvla_serve.proto", package=PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for number, (field, kind) in enumerate(fields, start=1):
            repeated = kind.endswith("*")
            kind = kind.rstrip("*")
            spec = message.field.add(name=field, number=number)
            spec.label = _T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL
            if kind in _SCALARS:
                spec.type = _SCALARS[kind]
            else:
                spec.type, spec.type_name = _T.TYPE_MESSAGE, f".{PACKAGE}.{kind}"
    classes = message_factory.GetMessages([proto])
    return {name: classes[f"{PACKAGE}.{name}"] for name in _MESSAGES}


_CLASSES = _build()
Tensor = _CLASSES["Tensor"]
Observation = _CLASSES["Observation"]
PredictRequest = _CLASSES["PredictRequest"]
PredictReply = _CLASSES["PredictReply"]
Timing = _CLASSES["Timing"]
InfoRequest = _CLASSES["InfoRequest"]
Feature = _CLASSES["Feature"]
PolicyInfo = _CLASSES["PolicyInfo"]


class ProtocolError(SmolVLAError):
    """A message that does not decode or does not match what the server expects (→ INVALID_ARGUMENT)."""


def encode_tensor(name: str, array: Any) -> Any:
    """A `Tensor` message from a numpy array (or torch tensor) of an allowed dtype."""
    array = np.asarray(array.numpy() if hasattr(array, "numpy") else array)
    dtype = next((k for k, v in DTYPES.items() if v == array.dtype.newbyteorder("<")), None)
    if dtype is None:
        raise ProtocolError(f"tensor {name!r}: dtype {array.dtype} is not one of {sorted(DTYPES)}")
    data = np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes()
    return Tensor(name=name, dtype=dtype, shape=list(array.shape), data=data)


def decode_tensor(message: Any) -> np.ndarray:
    """The numpy array of a `Tensor` message, or a ProtocolError naming the tensor and what is wrong."""
    name = message.name or "<unnamed>"
    if message.dtype not in DTYPES:
        raise ProtocolError(f"tensor {name!r}: dtype {message.dtype!r} is not one of {sorted(DTYPES)}")
    shape = tuple(message.shape)
    # Each dim is bounded too: (0, 2⁶²) holds no data, yet numpy cannot even describe it (found by the fuzzer).
    if len(shape) > MAX_DIMS or any(not 0 <= d <= MAX_ELEMENTS for d in shape):
        raise ProtocolError(f"tensor {name!r}: shape {shape} must have at most {MAX_DIMS} dims in 0..{MAX_ELEMENTS}")
    count = int(np.prod(shape, dtype=np.float64))
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"tensor {name!r}: {count} elements is more than the limit {MAX_ELEMENTS}")
    dtype = DTYPES[message.dtype]
    if len(message.data) != count * dtype.itemsize:
        raise ProtocolError(
            f"tensor {name!r}: {len(message.data)} bytes of data for shape {shape} {message.dtype} "
            f"(expected {count * dtype.itemsize})"
        )
    return np.frombuffer(message.data, dtype=dtype).reshape(shape)


def decode(kind: Any, payload: bytes) -> Any:
    """Parse raw request bytes as message class `kind`; malformed bytes are a ProtocolError, not a crash."""
    try:
        return kind.FromString(payload)
    except (DecodeError, ValueError, TypeError) as e:
        raise ProtocolError(f"malformed {kind.DESCRIPTOR.name} message: {e}") from e
