"""Several robots in one run: a 6-D two-camera arm and a 16-D one-camera robot trained together, each served in its
own width and units; `--dataset.episodes`, `--fill_missing_cameras` and the bad inputs around them."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from smolvla.cli import main
from smolvla.data import DatasetError, load_meta
from smolvla.errors import ConfigError
from smolvla.eval.agent import SmolVLAAgent
from smolvla.keys import ACTION_DIM_IS_PAD, ACTION_KEY, STATE_KEY
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import TaskTokenizer, embodiment_names, load_processors
from smolvla.processors.factory import robot_features
from smolvla.serve.client import PolicyClient
from smolvla.serve.server import PolicyServer, ServeConfig
from smolvla.train.build import build_policy, build_processors
from smolvla.train.config import DatasetArgs, PolicyArgs
from smolvla.train.data import load_train_data
from tests.data.builders import smooth_frames, write_v30

TOP, WRIST = "observation.images.top", "observation.images.wrist"
ROBOTS = {  # name: (state/action width, cameras {key: (h, w)}, offset of its readings: distinct units)
    "so101": (6, {TOP: (48, 64), WRIST: (32, 40)}, 5.0),
    "g1": (16, {TOP: (40, 40)}, -3.0),
}
COMMON = ["--batch_size=4", "--num_workers=0", "--progress=false", "--val_freq=0", "--log_freq=1",
          "--policy.chunk_size=3", "--policy.n_action_steps=3"]  # fmt: skip


def write_robot(root, width, cameras, offset, robot_type, episodes=3, seed=0):
    features = {STATE_KEY: {"dtype": "float32", "shape": [width]}, ACTION_KEY: {"dtype": "float32", "shape": [width]},
                **{k: {"dtype": "video", "shape": [h, w, 3]} for k, (h, w) in cameras.items()}}  # fmt: skip
    rng = np.random.default_rng(seed)
    data = []
    for e in range(episodes):
        n = 6 + e
        episode = {key: (offset + rng.normal(size=(n, width))).astype(np.float32) for key in (STATE_KEY, ACTION_KEY)}
        data.append(episode | {k: smooth_frames(n, h, w, seed=e) for k, (h, w) in cameras.items()})
    tasks = [f"{robot_type} task {e % 2}" for e in range(episodes)]
    return write_v30(root, data, tasks, features=features, robot_type=robot_type)


@pytest.fixture(scope="module")
def robots(tmp_path_factory):
    base = tmp_path_factory.mktemp("robots")
    return {name: write_robot(base / name, w, cams, off, name) for name, (w, cams, off) in ROBOTS.items()}


@pytest.fixture(scope="module")
def mixed(robots, tmp_path_factory):
    """A tiny policy trained 2 steps on both robots by the public command."""
    out = tmp_path_factory.mktemp("mixed") / "run"
    roots = ",".join(str(r) for r in robots.values())
    assert main(["train", f"--dataset.root={roots}", f"--output_dir={out}", "--steps=2", *COMMON]) == 0
    return out / "checkpoints" / "last" / "pretrained_model"


def robot_observation(name, seed=0):
    width, cameras, offset = ROBOTS[name]
    rng = np.random.default_rng(seed)
    raw = {STATE_KEY: torch.tensor(offset + rng.normal(size=width), dtype=torch.float32), "task": f"{name} task 0"}
    return raw | {k: torch.rand(3, h, w) for k, (h, w) in cameras.items()}


def test_each_robot_comes_back_in_its_own_width_and_units(mixed, robots):
    policy = SmolVLAPolicy.from_pretrained(mixed)
    assert policy.config.state_dim == 16 and policy.config.action_dim == 16  # the widest robot
    assert set(policy.config.image_features) == {TOP, WRIST}  # every robot's cameras
    assert embodiment_names(mixed) == ["so101", "g1"]  # named by the datasets' robot_type
    with pytest.raises(ConfigError, match=r"several robots \['so101', 'g1'\].*--embodiment=NAME"):
        load_processors(mixed)
    for saved in mixed.glob("policy_preprocessor*.json"):  # derived steps (fill, pad) are rebuilt, never saved
        assert not {"smolvla_camera_processor", "smolvla_pad_processor"} & {
            s["registry_name"] for s in json.loads(saved.read_text())["steps"]
        }
    for name, (width, cameras, _) in ROBOTS.items():
        pre, post = load_processors(mixed, embodiment=name)
        assert robot_features(pre, post, policy.config) == {
            STATE_KEY: [width], ACTION_KEY: [width], **{k: [3, h, w] for k, (h, w) in cameras.items()}
        }  # fmt: skip
        batch = pre(robot_observation(name))
        assert batch[STATE_KEY].shape == (1, 16) and torch.all(batch[STATE_KEY][:, width:] == 0)
        if WRIST not in cameras:  # the robot has no wrist camera: a black image the model does not attend to
            assert not batch[WRIST + "_padding_mask"].any()
        chunk = policy.predict_chunk(batch)
        assert post({ACTION_KEY: chunk})[ACTION_KEY].shape == (1, 3, width)
        # Units: the model's zero is this robot's own mean action (its statistics, not the other robot's).
        mean = load_meta(robots[name]).stats[ACTION_KEY]["mean"]
        zero = post({ACTION_KEY: torch.zeros(1, 3, 16)})[ACTION_KEY][0, 0]
        np.testing.assert_allclose(zero.numpy(), mean, rtol=1e-5, atol=1e-5)
    agent = SmolVLAAgent.from_pretrained(mixed, embodiment="g1")
    assert agent.cameras == {TOP: "top"}  # eval asks the env only for what this robot has


def test_each_robot_is_served_by_name(mixed):
    for name, (width, cameras, offset) in ROBOTS.items():
        server = PolicyServer(ServeConfig(policy_path=str(mixed), port=0, embodiment=name))
        port = server.start()
        try:
            client = PolicyClient(address=f"127.0.0.1:{port}")
            info = client.info()
            assert info.action_dim == width
            assert {f.name: list(f.shape) for f in info.features} == {
                STATE_KEY: [width], **{k: [h, w, 3] for k, (h, w) in cameras.items()}
            }  # fmt: skip
            rng = np.random.default_rng(0)
            images = {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in cameras.items()}
            state = (offset + rng.normal(size=width)).astype(np.float32)
            reply = client.predict(state, images, f"{name} task 0", seed=1)
            assert reply.actions.shape == (3, width) and np.isfinite(reply.actions).all()
        finally:
            server.stop()


def test_a_mixed_batch_is_normalized_row_by_row_and_the_loss_counts_real_dims(robots):
    data = load_train_data(DatasetArgs(root=tuple(str(r) for r in robots.values()), val_fraction=0.0), 3, 0)
    assert [e.name for e in data.embodiments] == ["so101", "g1"] and data.mixed
    policy = build_policy(PolicyArgs(chunk_size=3, n_action_steps=3), data)
    run = build_processors(policy, TaskTokenizer.train(data.tasks), data, "cpu")
    (every,) = run.saved
    sizes = data.train.sizes
    raw = next(iter(DataLoader(data.train, batch_size=4, sampler=[0, 1, sizes[0], sizes[0] + 1])))
    batch = run.train(raw)
    for row, name in enumerate(["so101", "so101", "g1", "g1"]):
        width = ROBOTS[name][0]
        alone = every.pairs[name][0]({STATE_KEY: raw[STATE_KEY][row, :width], "task": raw["task"][row]})
        torch.testing.assert_close(batch[STATE_KEY][row, :width], alone[STATE_KEY][0, :width])
        assert torch.all(batch[STATE_KEY][row, width:] == 0) and torch.all(batch[ACTION_KEY][row, :, width:] == 0)
        assert batch[ACTION_DIM_IS_PAD][row].sum() == 16 - width
    noise, time = torch.randn(4, 3, 32), torch.rand(4)
    sums, counts = policy.compute_loss(batch, noise=noise, time=time, reduction="sum_count")
    valid_steps = (~batch["action_is_pad"]).sum(dim=1)
    assert counts.tolist() == (valid_steps * torch.tensor([6, 6, 16, 16])).tolist()
    actions, _ = policy.prepare_actions(batch)
    elements = policy.model.losses(policy.prepare_observation(batch), actions, noise, time)["losses_raw"]
    for row, width in enumerate([6, 6, 16, 16]):  # each sample's loss: its valid steps × its robot's dims only
        steps = ~batch["action_is_pad"][row]
        torch.testing.assert_close(sums[row], elements[row, steps, :width].sum())


def test_a_mixed_run_resumes_bit_identically(robots, tmp_path):
    roots = ",".join(str(r) for r in robots.values())
    flags = [f"--dataset.root={roots}", "--steps=3", "--save_freq=2", *COMMON]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *flags, f"--output_dir={straight}"]) == 0
    shutil.copytree(straight, resumed, symlinks=True)  # as if stopped after the step-2 checkpoint
    shutil.rmtree(resumed / "checkpoints/000003")
    (resumed / "checkpoints/last").unlink()
    (resumed / "checkpoints/last").symlink_to("000002")
    assert main(["train", f"--output_dir={resumed}", "--resume=true"]) == 0
    weights = [load_file(d / "checkpoints/last/pretrained_model/model.safetensors") for d in (straight, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert embodiment_names(resumed / "checkpoints/last/pretrained_model") == ["so101", "g1"]


def test_explicit_embodiment_names(robots, tmp_path):
    roots = tuple(str(r) for r in robots.values())
    data = load_train_data(DatasetArgs(root=roots, embodiment=("arm", "humanoid")), 3, 0)
    assert [e.name for e in data.embodiments] == ["arm", "humanoid"]
    with pytest.raises(DatasetError, match="both embodiment 'arm' but their features differ"):
        load_train_data(DatasetArgs(root=roots, embodiment=("arm", "arm")), 3, 0)
    with pytest.raises(DatasetError, match="must be letters, digits"):  # several robots: names become file names
        load_train_data(DatasetArgs(root=roots, embodiment=("my arm", "g1")), 3, 0)
    odd = tmp_path / "my robot (v2)"  # one robot: its directory's name is never a file name, any name works
    shutil.copytree(robots["so101"], odd)
    assert load_train_data(DatasetArgs(root=(str(odd),)), 3, 0).embodiments[0].name == "so101"


def test_dataset_episodes_selects_episodes(robots):
    root = str(robots["so101"])
    data = load_train_data(DatasetArgs(root=(root,), episodes=(0, 2), val_fraction=0.0), 3, 0)
    assert data.train.datasets[0].episodes == [0, 2] and len(data.train) == 6 + 8
    with pytest.raises(DatasetError, match=r"episodes \[7\] that dataset .* does not have"):
        load_train_data(DatasetArgs(root=(root,), episodes=(0, 7)), 3, 0)


def test_dataset_episodes_flag_takes_lerobots_list_form(robots, tmp_path, capsys):
    flags = [f"--dataset.root={robots['so101']}", "--dataset.episodes=[0,2]", "--dataset.val_fraction=0"]
    assert main(["train", *flags, f"--output_dir={tmp_path}", "--steps=1", *COMMON]) == 0
    config = json.loads((tmp_path / "checkpoints/last/pretrained_model/train_config.json").read_text())
    assert config["dataset"]["episodes"] == [0, 2]


def test_a_dataset_wider_than_max_state_dim_is_one_clear_line(tmp_path, capsys):
    wide = write_robot(tmp_path / "wide", 40, {TOP: (32, 32)}, 0.0, "wide")
    assert main(["train", f"--dataset.root={wide}", f"--output_dir={tmp_path / 'run'}", "--steps=1", *COMMON]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "40-D 'observation.state', wider than the policy's max_state_dim=32" in err[0]


def test_fine_tuning_a_mixed_set_or_reflow_on_it_is_refused(robots, mixed, tmp_path, capsys):
    roots = ",".join(str(r) for r in robots.values())
    flags = [f"--dataset.root={roots}", f"--output_dir={tmp_path}", "--steps=1", *COMMON]
    assert main(["train", *flags, f"--policy.path={mixed}"]) == 2
    assert "fine-tuning (or reflow) onto several embodiments is not supported" in capsys.readouterr().err
    assert main(["train", *flags, "--policy.use_reflow=true", f"--policy.teacher_path={mixed}"]) == 2
    assert "fine-tuning (or reflow) onto several embodiments is not supported" in capsys.readouterr().err


def test_missing_cameras_are_filled_only_when_asked(robots, tmp_path, capsys):
    """A policy trained on the arm's top + wrist, fine-tuned on a robot with only `top`."""
    arm = tmp_path / "arm"
    assert main(["train", f"--dataset.root={robots['so101']}", f"--output_dir={arm}", "--steps=1", *COMMON]) == 0
    one_camera = write_robot(tmp_path / "one", 6, {TOP: (48, 64)}, 5.0, "so101_top")
    flags = [f"--dataset.root={one_camera}", f"--policy.path={arm / 'checkpoints/last'}", "--steps=1", *COMMON]
    assert main(["train", *flags, f"--output_dir={tmp_path / 'refused'}"]) == 2
    assert "--dataset.fill_missing_cameras=true" in capsys.readouterr().err
    out = tmp_path / "filled"
    assert main(["train", *flags, "--dataset.fill_missing_cameras=true", f"--output_dir={out}"]) == 0
    checkpoint = out / "checkpoints/last/pretrained_model"
    steps = [s["registry_name"] for s in json.loads((checkpoint / "policy_preprocessor.json").read_text())["steps"]]
    assert "smolvla_camera_processor" not in steps  # LeRobot's steps only: LeRobot loads it as is (it skips
    policy = SmolVLAPolicy.from_pretrained(checkpoint)  # absent cameras itself); smolvla derives the fill on load
    pre, post = load_processors(checkpoint)
    assert WRIST not in robot_features(pre, post, policy.config)  # a server asks this robot for `top` only
    observation = robot_observation("so101")
    del observation[WRIST]
    batch = pre(observation)
    assert not batch[WRIST + "_padding_mask"].any() and policy.predict_chunk(batch).shape == (1, 3, 6)
