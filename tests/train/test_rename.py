"""`--rename_map` (LeRobot's JSON form): train on a dataset whose cameras have other names than the policy's, and
serve the result to a robot that still uses its own names."""

import json

import numpy as np
import pytest
import torch

from smolvla.cli import main
from smolvla.data import DatasetError
from smolvla.errors import ConfigError
from smolvla.eval.agent import SmolVLAAgent
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import load_processors
from smolvla.reflow.config import ReflowTrainConfig
from smolvla.serve import protocol as proto
from smolvla.serve.client import PolicyClient
from smolvla.serve.drive import RunClientConfig, make_robot
from smolvla.serve.server import PolicyServer, ServeConfig
from smolvla.train.config import TrainConfig
from smolvla.train.trainer import train
from tests.data.builders import CAMERAS, EPISODES, make_episodes, write_v30

RENAME = {
    "observation.images.top": "observation.images.camera1",
    "observation.images.wrist": "observation.images.camera2",
}
COMMON = ["--batch_size=2", "--num_workers=0", "--progress=false", "--val_freq=0", "--log_freq=1", "--steps=2",
          "--policy.chunk_size=3", "--policy.n_action_steps=3"]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_v30(tmp_path_factory.mktemp("rename") / "ds", make_episodes(), [t for _, t in EPISODES])


@pytest.fixture(scope="module")
def renamed(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("rename") / "run"
    flags = [f"--dataset.root={dataset}", f"--output_dir={out}", f"--rename_map={json.dumps(RENAME)}", *COMMON]
    return train(TrainConfig.from_flags(flags)).checkpoint / "pretrained_model"


def test_the_policy_takes_the_new_names_and_its_processors_the_robots(renamed, dataset):
    policy = SmolVLAPolicy.from_pretrained(renamed)
    assert set(policy.config.image_features) == set(RENAME.values())
    pre, _ = load_processors(renamed)
    raw = {"observation.state": torch.zeros(4), "task": "pick up the cube"}
    raw |= {key: torch.rand(3, h, w) for key, (h, w) in CAMERAS.items()}  # the dataset's (robot's) own names
    batch = pre(raw)
    assert set(RENAME.values()) <= set(batch) and not set(RENAME) & set(batch)
    assert policy.predict_chunk(batch).shape == (1, 3, 3)


def test_a_served_renamed_policy_accepts_the_robots_names(renamed):
    server = PolicyServer(ServeConfig(policy_path=str(renamed), port=0))
    port = server.start()
    try:
        client = PolicyClient(address=f"127.0.0.1:{port}")
        info = client.info()
        assert {f.name for f in info.features} == {"observation.state", *RENAME}
        rng = np.random.default_rng(0)
        images = {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in CAMERAS.items()}
        reply = client.predict(rng.normal(size=4).astype(np.float32), images, "open the drawer", seed=3)
        assert reply.actions.shape == (3, 3) and np.isfinite(reply.actions).all()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("rename_map", "message"),
    [({"observation.images.front": "observation.images.camera1"},
      "renames 'observation.images.front', which the dataset .* does not have"),
     ({"observation.images.top": "observation.images.wrist"},
      "onto 'observation.images.wrist', which the dataset .* already has")],
)  # fmt: skip
def test_bad_rename_maps_are_one_clear_error(dataset, tmp_path, rename_map, message):
    flags = [f"--dataset.root={dataset}", f"--output_dir={tmp_path}", f"--rename_map={json.dumps(rename_map)}"]
    with pytest.raises(DatasetError, match=message):
        train(TrainConfig.from_flags([*flags, *COMMON]))


def test_a_rename_map_that_is_not_json_is_one_line(dataset, tmp_path, capsys):
    assert main(["train", f"--dataset.root={dataset}", f"--output_dir={tmp_path}", "--rename_map={top: cam}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rename_map: expected a JSON object of strings" in err[0]


def test_a_camera_mismatch_suggests_the_rename_map(renamed, dataset, tmp_path):
    """Fine-tuning the camera1/camera2 policy on the top/wrist dataset without a map: both sides and the fix."""
    flags = [f"--dataset.root={dataset}", f"--output_dir={tmp_path}", f"--policy.path={renamed}", *COMMON[:-2]]
    with pytest.raises(DatasetError) as caught:
        train(TrainConfig.from_flags(flags))
    text = str(caught.value)
    assert "observation.images.camera1" in text and "observation.images.top" in text
    suggested = json.loads(text.split("--rename_map='", 1)[1].split("'", 1)[0])
    assert suggested == RENAME
    train(TrainConfig.from_flags([*flags, f"--rename_map={json.dumps(suggested)}"]))  # the suggestion works


def test_rename_map_with_reflow_is_refused(dataset, renamed, tmp_path):
    flags = [f"--dataset.root={dataset}", "--policy.use_reflow=true", f"--policy.teacher_path={renamed}"]
    with pytest.raises(ConfigError, match="--rename_map is not supported with reflow"):
        ReflowTrainConfig.from_flags([*flags, f"--rename_map={json.dumps(RENAME)}"])


def test_a_rename_map_from_a_config_file_and_resume_rules(dataset, renamed, tmp_path):
    config_file = tmp_path / "train.yaml"
    config_file.write_text(f"dataset: {{root: [{dataset}]}}\nrename_map:\n  observation.images.top: x\n")
    assert TrainConfig.from_flags([f"--config_path={config_file}"]).rename_map == {"observation.images.top": "x"}
    run = renamed.parents[2]  # <run>/checkpoints/<step>/pretrained_model
    with pytest.raises(ConfigError, match="rename_map: checkpoint"):  # it changes the run: not resumable
        train(TrainConfig.from_flags([f"--output_dir={run}", "--resume=true", "--rename_map={}"]))


def test_eval_points_a_renamed_policy_at_the_envs_cameras(renamed):
    """The checkpoint expects the robot's `top`/`wrist` (its saved renames); `--rename_map` on eval maps Meta-World's
    `corner2`/`gripperPOV` onto them."""
    plain = SmolVLAAgent.from_pretrained(renamed)
    assert plain.cameras == {"observation.images.top": "top", "observation.images.wrist": "wrist"}
    env_map = {"observation.images.corner2": "observation.images.top",
               "observation.images.gripperPOV": "observation.images.wrist"}  # fmt: skip
    agent = SmolVLAAgent.from_pretrained(renamed, rename_map=env_map)
    assert agent.cameras == {"observation.images.corner2": "corner2", "observation.images.gripperPOV": "gripperPOV"}
    assert agent.image_size is None  # the two cameras differ in size: the env keeps its own
    rng = np.random.default_rng(0)
    observation = {
        "agent_pos": rng.normal(size=4).astype(np.float32),
        "task": "open the drawer",
        "pixels": {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in agent.cameras.values()},
    }
    agent.reset(seed=0)
    assert agent.select_action(observation).shape == (3,)
    with pytest.raises(ConfigError, match=r"needs camera 'top' .*renders \['corner2'\].*--rename_map"):
        plain.select_action(observation | {"pixels": {"corner2": observation["pixels"]["corner2"]}})  # fmt: skip


def test_serve_rename_map_lets_a_robot_keep_other_names(renamed):
    """The checkpoint expects top/wrist; this robot calls its cameras front/side."""
    robot_map = {"observation.images.front": "observation.images.top",
                 "observation.images.side": "observation.images.wrist"}  # fmt: skip
    server = PolicyServer(ServeConfig(policy_path=str(renamed), port=0, rename_map=robot_map))
    port = server.start()
    try:
        client = PolicyClient(address=f"127.0.0.1:{port}")
        assert {f.name for f in client.info().features} == {"observation.state", *robot_map}
        rng = np.random.default_rng(0)
        sizes = {"observation.images.front": CAMERAS["observation.images.top"],
                 "observation.images.side": CAMERAS["observation.images.wrist"]}  # fmt: skip
        images = {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in sizes.items()}
        reply = client.predict(rng.normal(size=4).astype(np.float32), images, "open the drawer", seed=3)
        assert reply.actions.shape == (3, 3)
    finally:
        server.stop()


def test_client_rename_map_picks_the_meta_world_cameras():
    info = proto.PolicyInfo(features=[proto.Feature(name="observation.images.top", dtype="uint8", shape=[32, 32, 3]),
                                      proto.Feature(name="observation.state", dtype="float32", shape=[4])])  # fmt: skip
    config = RunClientConfig(task="reach", rename_map={"observation.images.corner2": "observation.images.top"})
    robot = make_robot(config, info)
    try:
        assert robot.cameras == {"observation.images.top": "corner2"}
        observation = robot.reset(seed=0)
        assert observation.images["observation.images.top"].shape == (32, 32, 3)
    finally:
        robot.close()
