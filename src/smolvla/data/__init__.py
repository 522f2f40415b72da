"""LeRobot datasets on disk (v3.0 read/write, v2.1 read), decoding, statistics and multi-dataset sampling."""

from smolvla.data.dataset import LeRobotDataset, MultiLeRobotDataset, chunk_delta_timestamps, split_episodes
from smolvla.data.meta import DatasetError, DatasetMeta, load_meta
from smolvla.data.sampler import WeightedDatasetSampler, apportion
from smolvla.data.video import VideoError, VideoFrameReader, VideoSettings
from smolvla.data.writer import DatasetWriter

__all__ = [
    "DatasetError",
    "DatasetMeta",
    "DatasetWriter",
    "LeRobotDataset",
    "MultiLeRobotDataset",
    "VideoError",
    "VideoFrameReader",
    "VideoSettings",
    "WeightedDatasetSampler",
    "apportion",
    "chunk_delta_timestamps",
    "load_meta",
    "split_episodes",
]
