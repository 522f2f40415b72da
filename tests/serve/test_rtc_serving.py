"""A chunk-50 policy trained with training-time real-time chunking, served: `Info` says what it was trained for,
trained-RTC requests come back continuing the given steps exactly, requests it cannot serve are refused clearly, and
a pipelined robot client drives it."""

import grpc
import numpy as np
import pytest

from smolvla.errors import ConfigError
from smolvla.robot_io import Observation
from smolvla.serve.client import PolicyClient
from smolvla.serve.robot import ClientConfig, RobotClient, remote_source
from smolvla.serve.server import PolicyServer, ServeConfig
from smolvla.train.config import TrainConfig
from smolvla.train.trainer import train
from tests.data.builders import EPISODES, make_episodes, write_v30
from tests.serve.test_server import observation

TASK = "open the drawer"


def trained_checkpoint(root, *flags):
    dataset = write_v30(root / "ds", make_episodes(episodes=EPISODES), [t for _, t in EPISODES])
    trained_checkpoint.dataset = dataset
    flags = [f"--dataset.root={dataset}", f"--output_dir={root / 'run'}", "--steps=2", "--batch_size=4",
             "--num_workers=0", "--progress=false", "--val_freq=0", "--policy.chunk_size=50", *flags]  # fmt: skip
    return train(TrainConfig.from_flags(flags)).checkpoint / "pretrained_model"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A chunk-50 policy trained for up to 8 given steps, and a plain one."""
    started = {}
    for name, flags in {"trained": ["--policy.rtc_training_max_delay=8"], "plain": []}.items():
        checkpoint = trained_checkpoint(tmp_path_factory.mktemp(name), "--policy.n_action_steps=25", *flags)
        started[name] = PolicyServer(ServeConfig(policy_path=str(checkpoint), port=0))
        started[name].start()
    yield {name: PolicyClient(address=f"127.0.0.1:{s.port}") for name, s in started.items()}
    for server in started.values():
        server.stop()


def test_trained_requests_repeat_the_given_steps_and_continue_from_them(servers):
    robot = servers["trained"]
    info = robot.info()
    assert (info.chunk_size, info.n_action_steps, info.rtc_training_max_delay) == (50, 25, 8)
    assert servers["plain"].info().rtc_training_max_delay == 0
    state, images = observation(1)
    queued = robot.predict(state, images, TASK, seed=1).actions[10:]  # 10 executed, 40 still queued
    plain = robot.predict(state, images, TASK, seed=2).actions
    given = robot.predict(state, images, TASK, seed=2, queued_actions=queued, frozen_steps=6, rtc_mode="trained")
    assert given.actions.shape == (50, 3)
    np.testing.assert_allclose(given.actions[:6], queued[:6], rtol=0, atol=1e-5)  # robot units, via (un)normalize
    assert not np.allclose(given.actions[6:], plain[6:], atol=1e-4)  # the rest continues from them
    # a plain checkpoint still takes guided RTC
    guided = servers["plain"].predict(state, images, TASK, seed=2, queued_actions=queued, frozen_steps=6)
    assert guided.actions.shape == (50, 3) and np.isfinite(guided.actions).all()


def test_trained_requests_it_cannot_serve_are_refused_clearly(servers):
    state, images = observation(2)
    queued = np.zeros((20, 3), np.float32)
    cases = [
        (servers["plain"], 4, "trained", "not trained for training-time real-time chunking"),
        (servers["trained"], 9, "trained", "trained with 1..8 given steps"),
        (servers["trained"], 0, "trained", "got frozen_steps 0"),
        (servers["trained"], 4, "eager", "rtc_mode must be one of"),
    ]
    for robot, frozen, mode, message in cases:
        with pytest.raises(grpc.RpcError) as e:
            robot.predict(state, images, TASK, queued_actions=queued, frozen_steps=frozen, rtc_mode=mode)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()
    assert servers["trained"].predict(state, images, TASK).actions.shape == (50, 3)  # still serving


class CameraRobot:
    """The test policy's robot (4-D state, two cameras, 3-D actions) at 40 Hz for 60 steps."""

    fps = 40.0

    def reset(self, seed):
        self.executed = []
        return Observation(*observation(seed), TASK)

    def step(self, action):
        self.executed.append(action)
        return Observation(*observation(len(self.executed)), TASK), False, len(self.executed) == 60

    def hold(self, last_action):
        return np.zeros(3, np.float32)


def test_a_pipelined_trained_rtc_client_drives_the_chunk_50_policy(servers):
    robot, info = servers["trained"], servers["trained"].info()
    requests = []

    def source(request):
        requests.append(request)
        return remote_source(robot, rtc="trained")(request)

    # 6 steps of delay; a request every 5 steps (g = 0.9), so two in flight
    config = ClientConfig(rtc="trained", delay_s=0.15, chunk_threshold=0.9, max_in_flight=2)
    client = RobotClient(source, config, chunk_size=info.chunk_size,
                         rtc_training_max_delay=info.rtc_training_max_delay)  # fmt: skip
    stats = client.run_episode(CameraRobot(), seed=0)
    assert stats.steps == 60 and stats.stalls == 6 and stats.max_in_flight == 2  # only the first chunk waited for
    assert [r.frozen for r in requests[1:]] == [6] * (len(requests) - 1)  # the steps run during the delay, given
    with pytest.raises(ConfigError, match="at most 8 given"):  # 12 steps of delay: more than it was trained for
        RobotClient(source, ClientConfig(rtc="trained", delay_s=0.3, chunk_threshold=0.8), chunk_size=50,
                    rtc_training_max_delay=8).run_episode(CameraRobot(), seed=0)  # fmt: skip


def test_client_cli_refuses_settings_that_cannot_work(servers, capsys):
    from smolvla.cli import main

    plain = servers["plain"].address
    base = ["client", "--robot=replay", f"--dataset_root={trained_checkpoint.dataset}"]
    cases = {
        (f"--server={plain}", "--client.rtc=trained"): "not trained for training-time real-time chunking",
        (f"--server={plain}", "--client.max_in_flight=0"): "--client.max_in_flight must be >= 1",
        (f"--server={plain}", "--client.delay_s=6.0"): "60 control steps is not shorter than the policy's chunk (50",
    }
    for flags, message in cases.items():
        capsys.readouterr()
        assert main([*base, *flags]) == 2
        assert message in capsys.readouterr().err
