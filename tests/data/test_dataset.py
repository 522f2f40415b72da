"""LeRobot v3.0 write → read round trips, v2.1 reading, decoding behaviour, bad input."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from smolvla.data import (
    DatasetError,
    DatasetWriter,
    LeRobotDataset,
    MultiLeRobotDataset,
    VideoError,
    WeightedDatasetSampler,
    chunk_delta_timestamps,
    load_meta,
    split_episodes,
)
from tests.data.builders import CAMERAS, EPISODES, FEATURES, FPS, make_episodes, write_v21, write_v30

CHUNK = 5


def psnr(a: torch.Tensor, b: np.ndarray) -> float:
    mse = ((a.permute(1, 2, 0).numpy() * 255.0 - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


@pytest.fixture(scope="module")
def episodes():
    return make_episodes()


@pytest.fixture(scope="module")
def v30_root(tmp_path_factory, episodes):
    return write_v30(tmp_path_factory.mktemp("v30") / "ds", episodes)


def check_round_trip(ds, episodes):
    """States/actions exact, frames within codec tolerance, tasks right, chunk padding right at episode ends."""
    assert len(ds) == sum(len(e["action"]) for e in episodes)
    row = 0
    for e, (ep, (_, task)) in enumerate(zip(episodes, EPISODES, strict=True)):
        n = len(ep["action"])
        for t in range(n):
            item = ds[row + t]
            assert item["task"] == task
            assert int(item["episode_index"]) == e and int(item["frame_index"]) == t
            assert torch.equal(item["observation.state"], torch.from_numpy(ep["observation.state"][t]))
            valid = min(CHUNK, n - t)
            assert item["action_is_pad"].tolist() == [False] * valid + [True] * (CHUNK - valid)
            assert torch.equal(item["action"][:valid], torch.from_numpy(ep["action"][t : t + valid]))
            # Past the end, the last action is repeated (clamped), as LeRobot does.
            assert (item["action"][valid:] == torch.from_numpy(ep["action"][-1])).all()
            for key, (h, w) in CAMERAS.items():
                assert item[key].shape == (3, h, w) and item[key].dtype == torch.float32
                assert psnr(item[key], ep[key][t]) > 30, (key, e, t)
        row += n


def test_v30_round_trip(v30_root, episodes):
    ds = LeRobotDataset(v30_root, delta_timestamps=chunk_delta_timestamps(CHUNK, FPS))
    assert ds.meta.version == "v3.0" and ds.meta.tasks == ["pick up the cube", "open the drawer"]
    check_round_trip(ds, episodes)


def test_v30_files_follow_lerobot_layout(v30_root):
    info = json.loads((v30_root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 28 and info["total_tasks"] == 2
    assert info["features"]["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    assert info["features"]["observation.images.top"]["info"]["video.codec"] in ("av1", "h264")
    schema = pq.read_schema(v30_root / "data/chunk-000/file-000.parquet")
    assert str(schema.field("observation.state").type) == "fixed_size_list<element: float>[4]"
    assert str(schema.field("timestamp").type) == "float" and str(schema.field("index").type) == "int64"
    assert "observation.images.top" not in schema.names  # video features live only in the mp4
    episodes = pq.read_table(next((v30_root / "meta/episodes").glob("*/*.parquet"))).to_pylist()
    assert [e["dataset_from_index"] for e in episodes] == [0, 12, 19]
    assert [e["videos/observation.images.top/from_timestamp"] for e in episodes] == [0.0, 1.2, 1.9]
    tasks = pq.read_table(v30_root / "meta/tasks.parquet")
    assert tasks.column("__index_level_0__").to_pylist() == ["pick up the cube", "open the drawer"]
    assert b"pandas" in tasks.schema.metadata  # pandas (LeRobot) reads the strings as the index


def test_stats_match_the_frames(v30_root, episodes):
    stats = json.loads((v30_root / "meta/stats.json").read_text())
    state = np.concatenate([e["observation.state"] for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["min"], state.min(0))
    assert stats["observation.state"]["count"] == [28]
    top = np.concatenate([e["observation.images.top"] for e in episodes]) / 255.0
    assert np.asarray(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    np.testing.assert_allclose(
        np.asarray(stats["observation.images.top"]["mean"]).ravel(), top.mean((0, 1, 2)), rtol=1e-6
    )
    assert {"q01", "q50", "q99"} <= set(stats["action"])


def test_image_features_stored_in_parquet_are_exact(tmp_path):
    cams = {"observation.images.top": (16, 24)}
    features = {**{k: v for k, v in FEATURES.items() if "images" not in k}}
    features["observation.images.top"] = {"dtype": "image", "shape": [16, 24, 3]}
    eps = make_episodes(cameras=cams)
    ds = LeRobotDataset(write_v30(tmp_path / "img", eps, features=features))
    frame = (ds[13]["observation.images.top"] * 255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(frame, eps[1]["observation.images.top"][1])


def test_v21_reader(tmp_path, episodes):
    root = tmp_path / "v21"
    write_v21(root, episodes, [t for _, t in EPISODES])
    ds = LeRobotDataset(root, delta_timestamps=chunk_delta_timestamps(CHUNK, FPS))
    assert ds.meta.version == "v2.1"
    check_round_trip(ds, episodes)
    state = np.concatenate([e["observation.state"] for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(ds.meta.stats["observation.state"]["mean"], state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.meta.stats["observation.state"]["std"], state.std(0), rtol=1e-6)


def test_episode_selection_and_split(v30_root, episodes):
    ds = LeRobotDataset(v30_root, episodes=[2, 1], delta_timestamps=chunk_delta_timestamps(CHUNK, FPS))
    assert len(ds) == 16 and ds.episodes == [1, 2]
    assert torch.equal(ds[7]["observation.state"], torch.from_numpy(episodes[2]["observation.state"][0]))
    assert ds[6]["action_is_pad"].tolist() == [False] + [True] * 4
    train, val = split_episodes(range(10), 0.2, seed=1)
    assert len(val) == 2 and sorted(train + val) == list(range(10)) and not set(train) & set(val)
    assert split_episodes(range(10), 0.2, seed=1) == (train, val)
    with pytest.raises(DatasetError, match="no episode 7"):
        LeRobotDataset(v30_root, episodes=[7])
    with pytest.raises(DatasetError, match="no episodes selected"):
        LeRobotDataset(v30_root, episodes=[])


def test_sequential_access_decodes_each_frame_once(v30_root):
    ds = LeRobotDataset(v30_root)
    for i in range(len(ds)):
        ds[i]
    reader = ds.video_reader
    assert reader.decoded_frames == 2 * len(ds)  # two cameras, every frame decoded exactly once
    assert reader.seeks == 2  # one initial seek per file, then decoding only moves forward


def test_cached_frames_match_decoding(v30_root):
    episodes = [0, 2]
    plain = LeRobotDataset(v30_root, episodes=episodes)
    cached = LeRobotDataset(v30_root, episodes=episodes, cache_frames=True)
    decoded = cached.video_reader.decoded_frames  # everything is decoded up front
    assert cached.frames["observation.images.top"].dtype == np.uint8
    for i in (0, len(plain) // 2, len(plain) - 1):
        a, b = plain[i], cached[i]
        for key in CAMERAS:
            assert torch.equal(a[key], b[key])
    assert cached.video_reader.decoded_frames == decoded  # reading decodes nothing more


def test_dataloader_workers(v30_root):
    ds = LeRobotDataset(v30_root, delta_timestamps=chunk_delta_timestamps(CHUNK, FPS))
    ds[0]  # the parent's open decoders must not leak into forked workers
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["task"]) for b in batches) == 28
    first = batches[0]
    assert first["action"].shape == (4, CHUNK, 3) and first["observation.images.wrist"].shape == (4, 3, 32, 40)
    assert torch.equal(first["observation.state"][2], ds[2]["observation.state"])


def test_multi_dataset_with_weighted_sampler(v30_root, tmp_path, episodes):
    other = write_v30(tmp_path / "other", episodes[:1], tasks=["stack the blocks"])
    multi = MultiLeRobotDataset([LeRobotDataset(v30_root), LeRobotDataset(other)])
    assert len(multi) == 40 and multi[30]["task"] == "stack the blocks" and int(multi[30]["dataset_index"]) == 1
    sampler = WeightedDatasetSampler(multi.sizes, weights=[0.25, 0.75], num_samples=40, seed=0)
    drawn = list(sampler)
    assert sum(i >= 28 for i in drawn) == 30  # exactly 75 %, not on average
    bad = {**FEATURES, "action": {"dtype": "float32", "shape": [5], "names": None}}
    eps = [dict(episodes[0], action=np.zeros((12, 5), np.float32))]
    with pytest.raises(DatasetError, match="features"):
        MultiLeRobotDataset([LeRobotDataset(v30_root), LeRobotDataset(write_v30(tmp_path / "bad", eps, ["x"], bad))])


# --- bad input ---
def test_writer_rejects_bad_episodes_and_leaves_nothing(tmp_path, episodes):
    root = tmp_path / "ds"
    with (
        pytest.raises(DatasetError, match="same non-zero length"),
        DatasetWriter(root, fps=FPS, features=FEATURES) as w,
    ):
        w.add_episode({**episodes[0], "action": episodes[0]["action"][:3]}, "t")
    assert not root.exists() and list(tmp_path.iterdir()) == []  # no dataset, no temp directory left
    writer = DatasetWriter(root, fps=FPS, features=FEATURES)
    with pytest.raises(DatasetError, match=r"camera 'observation.images.top' frames must be"):
        writer.add_episode({**episodes[0], "observation.images.top": episodes[0]["observation.images.wrist"]}, "t")
    nan_state = episodes[0]["observation.state"].copy()
    nan_state[3, 1] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        writer.add_episode({**episodes[0], "observation.state": nan_state}, "t")
    with pytest.raises(DatasetError, match="missing"):
        writer.add_episode({k: v for k, v in episodes[0].items() if k != "action"}, "t")
    writer.abort()
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(tmp_path, fps=FPS, features=FEATURES)


@pytest.fixture
def broken(tmp_path, v30_root):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(v30_root, root)
    return root


def test_missing_data_file(broken):
    (broken / "data/chunk-000/file-000.parquet").unlink()
    with pytest.raises(DatasetError, match=r"missing file .*data/chunk-000/file-000\.parquet"):
        LeRobotDataset(broken)


def test_corrupt_parquet(broken):
    (broken / "data/chunk-000/file-000.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DatasetError, match=r"cannot read parquet file .*file-000\.parquet"):
        LeRobotDataset(broken)


def test_unknown_codebase_version(broken):
    info = json.loads((broken / "meta/info.json").read_text())
    info["codebase_version"] = "v9.9"
    (broken / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info\.json: codebase_version 'v9\.9' is not supported"):
        load_meta(broken)


def test_feature_shape_mismatch(broken):
    info = json.loads((broken / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = [5]
    (broken / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(
        DatasetError, match=r"file-000\.parquet: column 'observation\.state' has 4 values per row.*\[5\]"
    ):
        LeRobotDataset(broken)


def test_camera_shape_mismatch_and_missing_video(broken):
    (broken / "videos/observation.images.wrist/chunk-000/file-000.mp4").unlink()
    with pytest.raises(VideoError, match=r"video file .*observation\.images\.wrist/chunk-000/file-000\.mp4 does not"):
        LeRobotDataset(broken)[0]
    info = json.loads((broken / "meta/info.json").read_text())
    info["features"]["observation.images.top"]["shape"] = [64, 64, 3]
    (broken / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"camera 'observation\.images\.top' frame has shape \(48, 64, 3\)"):
        LeRobotDataset(broken)[0]


def test_bad_delta_timestamps(v30_root):
    with pytest.raises(DatasetError, match="multiples of 1/fps"):
        LeRobotDataset(v30_root, delta_timestamps={"action": [0.0, 0.05]})
    with pytest.raises(DatasetError, match="not a feature"):
        LeRobotDataset(v30_root, delta_timestamps={"actions": [0.0]})
