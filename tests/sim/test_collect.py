import json
import threading

import av
import numpy as np
import pytest

from smolvla.data import DatasetWriter, LeRobotDataset
from smolvla.data import video as video_module
from smolvla.data.meta import read_parquet
from smolvla.errors import ConfigError
from smolvla.sim import collect as collect_module
from smolvla.sim.collect import COLLECT_META, CollectConfig, collect, collected_with
from smolvla.sim.metaworld_env import MetaWorldConfig, MetaWorldEnv
from smolvla.sim.tasks import instruction


def small_config(root, **overrides) -> CollectConfig:
    env = MetaWorldConfig(task="reach,push", cameras=("corner2", "gripperPOV"), image_size=32, max_steps=150)
    settings = {"episodes_per_task": 2, "noise_std": 0.1, **overrides}
    return CollectConfig(env=env, output_dir=str(root), **settings)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    return collect(small_config(tmp_path_factory.mktemp("collect") / "demos"), progress=False)


def test_dataset_loads_with_our_reader(collected):
    dataset = LeRobotDataset(collected)
    meta = dataset.meta
    assert len(meta.length) == 4 and meta.tasks == [instruction("reach"), instruction("push")]
    assert meta.info["fps"] == 80 and meta.info["robot_type"] == "sawyer"
    item = dataset[0]
    assert item["task"] == instruction("reach")
    assert item["observation.images.corner2"].shape == (3, 32, 32)
    assert item["observation.state"].shape == (4,) and item["action"].shape == (4,)
    record = json.loads((collected / "meta" / COLLECT_META).read_text())
    assert [e["task"] for e in record["episodes"]] == ["reach", "reach", "push", "push"]
    assert all(e["success"] for e in record["episodes"])
    assert not collected.with_name("demos.partial").exists()


def test_replaying_recorded_actions_reproduces_success(collected):
    table = read_parquet(collected / "data" / "chunk-000" / "file-000.parquet")
    record = json.loads((collected / "meta" / COLLECT_META).read_text())
    actions = np.stack(table.column("action").to_numpy(zero_copy_only=False))
    states = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False))
    episode_index = table.column("episode_index").to_numpy()
    for episode in record["episodes"]:
        rows = episode_index == episode["episode_index"]
        with MetaWorldEnv(task=episode["task"], cameras=(), max_steps=150) as env:
            obs, _ = env.reset(seed=episode["seed"])
            for t, action in enumerate(actions[rows]):
                np.testing.assert_allclose(obs["agent_pos"], states[rows][t], atol=1e-6)
                obs, _, terminated, _, info = env.step(action)
            assert terminated and info["success"]  # success exactly at the last recorded step
            assert rows.sum() == episode["length"]


def test_interrupted_collection_resumes_to_the_same_dataset(collected, tmp_path, monkeypatch):
    """Kill after 2 staged episodes, resume with 2 workers: the dataset equals the uninterrupted 1-worker one."""
    root = tmp_path / "demos"
    real_stage, staged = collect_module._stage, []

    def stage_then_die(staging, episode):
        real_stage(staging, episode)
        staged.append(episode)
        if len(staged) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(collect_module, "_stage", stage_then_die)
    with pytest.raises(KeyboardInterrupt):
        collect(small_config(root), progress=False)
    monkeypatch.setattr(collect_module, "_stage", real_stage)
    staging = root.with_name("demos.partial")
    assert not root.exists() and len(list(staging.glob("*.npz"))) == 2
    (staging / "push__000001.tmp.npz").write_bytes(b"torn")  # a kill in the middle of staging a file

    with pytest.raises(ConfigError, match="different config"):
        collect(small_config(root, noise_std=0.3), progress=False)
    collect(small_config(root, num_workers=2), progress=False)
    assert not staging.exists()
    for name in ("data/chunk-000/file-000.parquet", "meta/stats.json"):
        if name.endswith(".json"):
            assert json.loads((root / name).read_text()) == json.loads((collected / name).read_text())
        else:
            assert read_parquet(root / name).equals(read_parquet(collected / name))


def test_a_kill_during_the_final_write_leaves_nothing_beside_the_output(collected, tmp_path, monkeypatch):
    """The dataset is built inside `<output>.partial/`; a SIGKILL there (no cleanup runs) leaves nothing in the
    output's parent, and the next run removes the half-written dataset and finishes from the staged episodes."""
    root = tmp_path / "demos"

    def killed(self, extra_meta=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(DatasetWriter, "finalize", killed)
    monkeypatch.setattr(DatasetWriter, "abort", lambda self: None)  # SIGKILL: no cleanup at all
    with pytest.raises(KeyboardInterrupt):
        collect(small_config(root), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos.partial"]
    assert list((tmp_path / "demos.partial").glob(".demos.tmp-*"))  # the half-written dataset stayed inside
    monkeypatch.undo()
    collect(small_config(root), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos"]
    assert read_parquet(root / "data/chunk-000/file-000.parquet").equals(
        read_parquet(collected / "data/chunk-000/file-000.parquet")
    )


def test_a_hung_av1_encoder_is_restarted_with_h264(tmp_path, monkeypatch, capsys):
    """SVT-AV1 can deadlock under load (CPU idle, no progress). The watchdog turns that into an error and collect
    rewrites the dataset from its staged episodes with libx264, instead of hanging forever."""
    release = threading.Event()
    real_encode = video_module.VideoEncoder._encode

    def encode(self, frames):
        if self.codec == "libsvtav1":
            release.wait(60)  # a deadlock, as far as the writer can tell
        return real_encode(self, frames)

    monkeypatch.setattr(video_module, "STALL_TIMEOUT_S", 1.0)
    monkeypatch.setattr(video_module.VideoEncoder, "_encode", encode)
    try:
        root = collect(small_config(tmp_path / "demos", episodes_per_task=1), progress=False)
    finally:
        release.set()
    assert "made no progress for 1 s" in capsys.readouterr().err
    dataset = LeRobotDataset(root)
    video = dataset.meta.video_files["observation.images.corner2"][0]
    assert av.open(str(video)).streams.video[0].codec_context.name == "h264"
    assert dataset[0]["observation.images.corner2"].shape == (3, 32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos"]


def test_existing_output_is_not_overwritten(collected):
    with pytest.raises(ConfigError, match="already exists"):
        collect(small_config(collected), progress=False)


def test_varied_joint_starts_are_part_of_what_a_dataset_was_collected_with(collected, tmp_path):
    """A dataset collected with Meta-World's own starts (and episodes that end at success) is not taken for one with
    varied starts, varied starts from another range, spread hand starts, or steps after success (the benchmark driver
    would otherwise keep the wrong data); asking for varied starts on tasks without a joint range is refused before
    anything is written."""
    assert collected_with(collected, small_config(collected))
    varied = small_config(collected)
    varied.env.vary_joint_start = True
    assert not collected_with(collected, varied)
    carried_on = small_config(collected)
    carried_on.env.steps_after_success = 10
    assert not collected_with(collected, carried_on)
    spread_hand = small_config(collected)
    spread_hand.env.hand_start_spread = (0.1, 0.05, 0.08)
    assert not collected_with(collected, spread_hand)
    record = json.loads((collected / "meta" / COLLECT_META).read_text())
    record["config"]["env"]["vary_joint_start"] = True  # as a dataset collected with `varied` would record it
    (tmp_path / "varied" / "meta").mkdir(parents=True)
    (tmp_path / "varied" / "meta" / COLLECT_META).write_text(json.dumps(record))
    ranged = small_config(collected)
    ranged.env.vary_joint_start, ranged.env.joint_start = True, (-0.1, -0.05)
    assert collected_with(tmp_path / "varied", varied) and not collected_with(tmp_path / "varied", ranged)
    bad = small_config(tmp_path / "demos")
    bad.env.vary_joint_start = True
    with pytest.raises(ConfigError, match=r"vary_joint_start is defined for .* not for \['reach', 'push'\]"):
        collect(bad, progress=False)
    assert [path.name for path in tmp_path.iterdir()] == ["varied"]  # nothing written for `bad`
