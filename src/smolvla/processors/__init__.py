"""Processor pipelines: raw robot observations ↔ policy batches (language, normalization, cameras, padding)."""

from smolvla.processors.language import NewlineTask, TaskTokenizer, Tokenize, TruncationWarning
from smolvla.processors.normalize import Normalize, Unnormalize, stats_from_legacy
from smolvla.processors.observation import AddBatchDim, CheckCameras, PadFeatures, RenameObservations, ToDevice
from smolvla.processors.pipeline import Pipeline, ProcessorStep
from smolvla.processors.smolvla import load_processors, make_processors, save_processors

__all__ = [
    "AddBatchDim",
    "CheckCameras",
    "NewlineTask",
    "Normalize",
    "PadFeatures",
    "Pipeline",
    "ProcessorStep",
    "RenameObservations",
    "TaskTokenizer",
    "ToDevice",
    "Tokenize",
    "TruncationWarning",
    "Unnormalize",
    "load_processors",
    "make_processors",
    "save_processors",
    "stats_from_legacy",
]
