"""The policy server end to end on localhost: same chunks as the local policy, batching, typed messages only,
clear status codes for bad or unauthenticated requests (and the server keeps serving), reconnect after a restart."""

import hashlib
import json
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from smolvla.errors import ConfigError
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import load_processors
from smolvla.serve import protocol as proto
from smolvla.serve.client import PolicyClient
from smolvla.serve.server import PolicyServer, ServeConfig
from smolvla.train.config import TrainConfig
from smolvla.train.trainer import train
from tests.data.builders import EPISODES, make_episodes, write_v30

TOKEN = "s3cret"
CAMERAS = {"observation.images.top": (48, 64), "observation.images.wrist": (32, 40)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_v30(
        tmp_path_factory.mktemp("serve") / "ds", make_episodes(episodes=EPISODES), [t for _, t in EPISODES]
    )


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    flags = [f"--dataset.root={dataset}", f"--output_dir={root / 'run'}", "--steps=2", "--batch_size=4",
             "--num_workers=0", "--progress=false", "--val_freq=0", "--policy.chunk_size=5",
             "--policy.n_action_steps=5"]  # fmt: skip
    return train(TrainConfig.from_flags(flags)).checkpoint / "pretrained_model"


@pytest.fixture(scope="module")
def server(checkpoint):
    srv = PolicyServer(ServeConfig(policy_path=str(checkpoint), port=0, token=TOKEN, batch_window_ms=30,
                                   max_message_mb=1))  # fmt: skip
    srv.start()
    yield srv
    srv.stop()


def observation(seed=0):
    rng = np.random.default_rng(seed)
    state = rng.normal(size=4).astype(np.float32)
    images = {k: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for k, (h, w) in CAMERAS.items()}
    return state, images


def local_chunk(checkpoint, state, images, task, seed, steps=None):
    policy = SmolVLAPolicy.from_pretrained(checkpoint).eval()
    pre, post = load_processors(checkpoint)
    raw = {"observation.state": torch.from_numpy(state), "task": task}
    raw |= {k: torch.from_numpy(v).permute(2, 0, 1).float() / 255 for k, v in images.items()}
    noise = torch.randn(1, 5, policy.config.max_action_dim, generator=torch.Generator().manual_seed(seed))
    return post({"action": policy.predict_chunk(pre(raw), noise=noise, num_steps=steps)})["action"][0].numpy()


def client(server, **kwargs):
    return PolicyClient(address=f"127.0.0.1:{server.port}", token=TOKEN, **kwargs)


def test_chunks_match_the_local_policy_and_requests_are_batched(server, checkpoint):
    state, images = observation()
    reply = client(server).predict(state, images, "pick up the cube", timestep=7, seed=11)
    expected = local_chunk(checkpoint, state, images, "pick up the cube", seed=11)
    assert reply.actions.shape == (5, 3) and reply.timestep == 7
    np.testing.assert_allclose(reply.actions, expected, rtol=1e-5, atol=1e-5)
    assert reply.timing["inference_ms"] > 0
    # Concurrent clients: each gets its own chunk, computed together in batches.
    results = {}

    def ask(i):
        s, im = observation(i)
        results[i] = client(server).predict(s, im, "open the drawer", seed=100 + i, num_steps=3)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(r.timing["batch_size"] for r in results.values()) > 1
    for i in (0, 5):
        s, im = observation(i)
        np.testing.assert_allclose(results[i].actions, local_chunk(checkpoint, s, im, "open the drawer", 100 + i, 3),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip


def raw_call(server, payload: bytes, token=TOKEN):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    call = channel.unary_unary(proto.PREDICT)
    try:
        return call(payload, timeout=10, metadata=[("authorization", f"Bearer {token}")] if token else None)
    finally:
        channel.close()


def test_bad_requests_get_clear_status_codes_and_the_server_keeps_serving(server):
    state, images = observation()

    def request(state=state, images=images, task="pick up the cube"):
        tensors = [proto.encode_tensor("observation.state", state)]
        tensors += [proto.encode_tensor(k, v) for k, v in images.items()]
        return proto.PredictRequest(observation=proto.Observation(tensors=tensors, task=task)).SerializeToString()

    bad = {
        "malformed": (b"\xff\x01garbage", grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
        "wrong dtype": (request(state=state.astype(np.float64)), grpc.StatusCode.INVALID_ARGUMENT, "float32"),
        "missing camera": (request(images={"observation.images.top": images["observation.images.top"]}),
                           grpc.StatusCode.INVALID_ARGUMENT, "missing"),
        "NaN state": (request(state=np.full(4, np.nan, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        "absurd state": (request(state=np.full(4, 1e30, np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
                         "standard deviations"),
        "long task": (request(task="x" * 5000), grpc.StatusCode.INVALID_ARGUMENT, "characters"),
        "oversized": (request(images={**images, "observation.images.top": np.zeros((800, 800, 3), np.uint8)}),
                      grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    }  # fmt: skip
    lying = proto.Tensor(name="observation.state", dtype="float32", shape=[4], data=b"\x00" * 3)
    bad["short data"] = (
        proto.PredictRequest(observation=proto.Observation(tensors=[lying], task="x")).SerializeToString(),
        grpc.StatusCode.INVALID_ARGUMENT, "bytes of data",
    )  # fmt: skip

    def with_prefix(actions, frozen):
        message = proto.PredictRequest.FromString(request())
        message.queued_actions.CopyFrom(proto.encode_tensor("queued_actions", actions))
        message.frozen_steps = frozen
        return message.SerializeToString()

    queued = np.zeros((3, 3), np.float32)
    bad["prefix width"] = (with_prefix(np.zeros((3, 2), np.float32), 1), grpc.StatusCode.INVALID_ARGUMENT, "(1..5, 3)")
    bad["prefix NaN"] = (with_prefix(queued + np.nan, 1), grpc.StatusCode.INVALID_ARGUMENT, "NaN")
    bad["prefix frozen"] = (with_prefix(queued, 4), grpc.StatusCode.INVALID_ARGUMENT, "frozen_steps")
    empty_but_huge = proto.Tensor(name="observation.state", dtype="float32", shape=[0, 2**62], data=b"")
    bad["huge empty shape"] = (  # found by the fuzzer: numpy cannot even describe it
        proto.PredictRequest(observation=proto.Observation(tensors=[empty_but_huge], task="x")).SerializeToString(),
        grpc.StatusCode.INVALID_ARGUMENT, "dims in 0..",
    )  # fmt: skip
    for name, (payload, code, text) in bad.items():
        with pytest.raises(grpc.RpcError) as e:
            raw_call(server, payload)
        assert e.value.code() == code, name
        assert text in e.value.details(), (name, e.value.details())
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, request(), token=None)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, request(), token="guess")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = proto.PredictReply.FromString(raw_call(server, request()))  # still serving
    assert proto.decode_tensor(reply.actions).shape == (5, 3)
    info = client(server).info()
    assert info.chunk_size == 5 and {f.name for f in info.features} == {"observation.state", *CAMERAS}


def test_rtc_requests_continue_the_queued_actions(server):
    """Real-time chunking through the server: the new chunk's frozen steps follow the actions still queued from the
    previous one (which the robot executes while the server thinks); without a prefix the same noise does not."""
    state, images = observation(3)
    robot = client(server)
    previous = robot.predict(state, images, "open the drawer", seed=1).actions
    queued = previous[2:]  # 2 of 5 executed: 3 queued, the first 2 of which execute during inference
    plain = robot.predict(state, images, "open the drawer", seed=2).actions
    rtc = robot.predict(state, images, "open the drawer", seed=2, queued_actions=queued, frozen_steps=2)
    assert rtc.timing["batch_size"] == 1
    plain_gap, rtc_gap = (np.abs(chunk[:2] - queued[:2]).mean() for chunk in (plain, rtc.actions))
    assert rtc_gap < 0.5 * plain_gap


def test_client_reconnects_after_a_server_restart(checkpoint):
    config = ServeConfig(policy_path=str(checkpoint), port=0)
    first = PolicyServer(config)
    port = first.start()
    robot = PolicyClient(address=f"127.0.0.1:{port}", retries=8, backoff_s=0.1)
    state, images = observation()
    assert robot.predict(state, images, "open the drawer").actions.shape == (5, 3)
    first.stop()
    second = PolicyServer(ServeConfig(policy_path=str(checkpoint), port=port))
    threading.Timer(0.5, second.start).start()  # the server comes back while the client is retrying
    try:
        assert robot.predict(state, images, "open the drawer").actions.shape == (5, 3)
    finally:
        time.sleep(0.6)
        second.stop()
        robot.close()


def test_a_second_server_on_a_busy_port_is_refused(server, checkpoint):
    """gRPC's default SO_REUSEPORT would let a second (token-less, perhaps stale) server answer some requests."""
    second = PolicyServer(ServeConfig(policy_path=str(checkpoint), port=server.port))
    with pytest.raises(ConfigError, match=f"127.0.0.1:{server.port}: the port is in use"):
        second.start()
    second.service.close()
    reply = client(server).predict(*observation(), "open the drawer")  # the first one still answers, with its token
    assert reply.actions.shape == (5, 3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("port", 70000, "--port must be in 0..65535"), ("port", -1, "--port must be in 0..65535"),
     ("max_pending", 0, "--max_pending must be positive"), ("num_steps", 0, "--num_steps must be in 1..100"),
     ("request_timeout_s", 0, "--request_timeout_s must be positive")],
)  # fmt: skip
def test_out_of_range_settings_are_one_clear_error(checkpoint, field, value, message):
    with pytest.raises(ConfigError, match=message):
        PolicyServer(ServeConfig(policy_path=str(checkpoint), **{field: value}))


def test_startup_line_names_address_auth_and_weights(server, checkpoint):
    sha = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()[:12]
    line = server.describe()
    assert f"127.0.0.1:{server.port}" in line and "token required" in line and sha in line


def test_requests_beyond_max_pending_are_refused_not_queued(checkpoint):
    """Each admitted request holds a slot until answered: memory is bounded whatever the clients send."""
    busy = PolicyServer(ServeConfig(policy_path=str(checkpoint), port=0, max_pending=1, batch_window_ms=400))
    port = busy.start()
    answers = {}

    def ask(i):
        try:
            answers[i] = PolicyClient(address=f"127.0.0.1:{port}").predict(*observation(i), "open the drawer").actions
        except grpc.RpcError as e:
            answers[i] = f"{e.code().name}: {e.details()}"

    try:
        first = threading.Thread(target=ask, args=(0,))
        first.start()
        time.sleep(0.15)  # the first request waits for company in the 400 ms batch window, holding the only slot
        ask(1)
        first.join()
        assert answers[0].shape == (5, 3)
        assert "RESOURCE_EXHAUSTED" in answers[1] and "1 requests are already waiting" in answers[1]
        ask(2)  # the slot came back with the first answer
        assert answers[2].shape == (5, 3)
    finally:
        busy.stop()


def test_nothing_on_the_wire_is_pickled():
    source = Path(proto.__file__).parent
    for path in source.glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.loads" not in text, path


def test_a_full_episode_through_the_server(server):
    from smolvla.robot_io import Observation
    from smolvla.serve.robot import ClientConfig, RobotClient, remote_source

    class CameraRobot:  # the test policy's robot: 4-D state, two cameras, 3-D actions; 20 Hz, 12 steps
        fps = 20.0

        def __init__(self):
            self.executed = []

        def reset(self, seed):
            return Observation(*observation(seed), "open the drawer")

        def step(self, action):
            self.executed.append(action)
            state, images = observation(len(self.executed))
            return Observation(state, images, "open the drawer"), False, len(self.executed) == 12

        def hold(self, last_action):
            return np.zeros(3, np.float32)

    robot = CameraRobot()
    stats = RobotClient(remote_source(client(server)), ClientConfig(chunk_threshold=0.4)).run_episode(robot, 0)
    assert stats.steps == 12 and len(robot.executed) == 12 and stats.stalls == 0
    assert stats.requests == 4  # chunks of 5, a new one whenever at most 2 remain: at steps 0, 3, 6, 9
    assert all(a.shape == (3,) and np.isfinite(a).all() for a in robot.executed)


def test_client_cli_replays_a_dataset_episode_through_the_server(server, dataset, tmp_path, capsys):
    from smolvla.cli import main

    flags = ["client", f"--server=127.0.0.1:{server.port}", "--robot=replay", f"--dataset_root={dataset}",
             "--replay_episode=1", "--client.chunk_threshold=0.4", f"--output_dir={tmp_path}"]  # fmt: skip
    assert main([*flags, f"--token={TOKEN}"]) == 0
    stats = json.loads((tmp_path / "client_stats.json").read_text())
    (episode,) = stats["per_episode"]
    assert episode["steps"] == EPISODES[1][0] and episode["stalls"] == 0  # the whole 7-frame episode, never starved
    assert episode["requests"] == 3 and stats["round_trip_ms"]["p99"] >= stats["round_trip_ms"]["p50"] > 0
    capsys.readouterr()
    assert main(flags) == 2  # no token
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["client", "--robot=replay"]) == 2
    assert "--dataset_root" in capsys.readouterr().err


def test_fuzzed_messages_get_status_codes_and_never_crash_the_server(server):
    from smolvla.serve import fuzz

    result = fuzz.run(f"127.0.0.1:{server.port}", count=300, token=TOKEN, seed=7)
    assert result["unexpected"] == [] and result["still_serving"]
    statuses = {code for kinds in result["statuses"].values() for code in kinds}
    assert statuses <= {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"} and "INVALID_ARGUMENT" in statuses
    assert sum(sum(kinds.values()) for kinds in result["statuses"].values()) == 300
