"""Processor pipelines: raw robot observations ↔ policy batches (language, normalization, cameras, padding)."""

from smolvla.processors.factory import EmbodimentProcessors, embodiment_names, load_processors, make_processors
from smolvla.processors.language import NewlineTask, TaskTokenizer, Tokenize, TruncationWarning
from smolvla.processors.normalize import Normalize, Unnormalize, stats_from_legacy
from smolvla.processors.observation import (
    AddBatchDim,
    CheckCameras,
    ImagesToFloat,
    PadFeatures,
    RenameObservations,
    ToDevice,
)
from smolvla.processors.pipeline import Pipeline, ProcessorStep

__all__ = [
    "AddBatchDim",
    "CheckCameras",
    "EmbodimentProcessors",
    "ImagesToFloat",
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
    "embodiment_names",
    "load_processors",
    "make_processors",
    "stats_from_legacy",
]
