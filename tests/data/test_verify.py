"""Inconsistent datasets are refused when opened, before any training step, with one error naming the file."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from smolvla.cli import main
from smolvla.data import DatasetError
from smolvla.train.config import DatasetArgs, TrainConfig
from smolvla.train.data import load_train_data
from smolvla.train.trainer import Trainer
from tests.data.builders import EPISODES, make_episodes, write_v30

EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
VIDEO = "videos/observation.images.top/chunk-000/file-000.mp4"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_v30(tmp_path_factory.mktemp("verify") / "ds", make_episodes())


@pytest.fixture
def dataset(pristine, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(pristine, copy)
    return copy


def open_for_training(root, verify=True):
    return load_train_data(DatasetArgs(root=(str(root),), verify=verify), chunk_size=3, seed=0)


def drop_episode_row(root, episode):
    path = root / EPISODES_FILE
    table = pq.read_table(path)
    keep = [i for i in range(table.num_rows) if i != episode]
    pq.write_table(table.take(keep), path)


def test_a_consistent_dataset_passes(dataset, capsys):
    assert len(open_for_training(dataset).train) > 0
    assert main(["check-dataset", f"--root={dataset}"]) == 0
    assert f"{len(EPISODES)} episodes" in capsys.readouterr().out


def test_an_episode_missing_from_the_episode_table(dataset):
    drop_episode_row(dataset, len(EPISODES) - 1)  # the last one: the rest still looks contiguous
    with pytest.raises(DatasetError, match=r"info\.json counts 3 episodes but .*meta/episodes lists 2"):
        open_for_training(dataset)


def test_a_gap_in_the_episode_table(dataset):
    drop_episode_row(dataset, 1)
    with pytest.raises(DatasetError, match=r"meta/episodes: episode 1 is missing"):
        open_for_training(dataset)


def test_fps_that_contradicts_the_timestamps(dataset):
    info = json.loads((dataset / "meta/info.json").read_text())
    info["fps"] = 20  # the frames are 0.1 s apart
    (dataset / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"advance by 0\.1000 s per frame .* says fps=20"):
        open_for_training(dataset)


def test_a_deleted_video_is_caught_before_training(dataset, tmp_path, capsys):
    (dataset / VIDEO).unlink()
    flags = [f"--dataset.root={dataset}", f"--output_dir={tmp_path / 'run'}", "--steps=1", "--batch_size=2",
             "--num_workers=0", "--progress=false", "--policy.chunk_size=3", "--policy.n_action_steps=3"]  # fmt: skip
    with pytest.raises(DatasetError, match=f"missing video file {dataset / VIDEO}"):
        Trainer(TrainConfig.from_flags(flags))
    assert not (tmp_path / "run" / "tensorboard").exists()  # nothing started, nothing left behind
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing video file" in err[0]


def test_a_truncated_video(dataset):
    video = dataset / VIDEO
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(DatasetError, match=f"cannot read video {video}"):
        open_for_training(dataset)


def test_verification_can_be_skipped_for_huge_datasets(dataset, capsys):
    info = json.loads((dataset / "meta/info.json").read_text())
    info["fps"] = 20
    (dataset / "meta/info.json").write_text(json.dumps(info))
    assert len(open_for_training(dataset, verify=False).train) > 0
    assert main(["check-dataset", f"--root={dataset}"]) == 2
    assert "fps=20" in capsys.readouterr().err
