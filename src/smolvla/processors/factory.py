"""SmolVLA's pre- and post-processor pipelines, built from a policy config, dataset stats and a tokenizer.

Preprocessor: rename → batch → newline → tokenize → device → normalize (LeRobot's order and step names, so LeRobot
loads the files; the optional fill of missing cameras is an extra step LeRobot does not know). Postprocessor:
unnormalize (crop + unnormalize the whole chunk) → cpu. Both are saved beside the weights in a checkpoint directory
under LeRobot's file names and reload with `load_processors`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from smolvla.keys import EMPTY_CAMERA_PREFIX
from smolvla.model.checkpoint import pretrained_dir
from smolvla.model.config import SmolVLAConfig
from smolvla.processors.language import NewlineTask, TaskTokenizer, Tokenize
from smolvla.processors.normalize import Normalize, Stats, Unnormalize
from smolvla.processors.observation import AddBatchDim, CheckCameras, RenameObservations, ToDevice
from smolvla.processors.pipeline import Pipeline

PREPROCESSOR = "policy_preprocessor"
POSTPROCESSOR = "policy_postprocessor"


def _features(features: dict) -> dict[str, dict]:
    return {k: {"type": f.type, "shape": list(f.shape)} for k, f in features.items()}


def make_processors(
    config: SmolVLAConfig,
    stats: Stats,
    tokenizer: TaskTokenizer,
    *,
    rename_map: dict[str, str] | None = None,
    fill_missing_cameras: bool = False,
    device: str = "cpu",
) -> tuple[Pipeline, Pipeline]:
    """The pipelines that turn raw observations into policy batches and policy chunks into robot actions.

    Raises ConfigError when `stats` lack a feature that is normalized (never a silent pass-through).
    """
    cameras = {k: list(f.shape) for k, f in config.image_features.items() if not k.startswith(EMPTY_CAMERA_PREFIX)}
    features = {**_features(config.input_features), **_features(config.output_features)}
    pre = Pipeline(
        [
            RenameObservations(rename_map),
            AddBatchDim(),
            *([CheckCameras(cameras, fill_missing=True)] if fill_missing_cameras else []),
            NewlineTask(),
            Tokenize(
                tokenizer,
                tokenizer_name=config.vlm_model_name,
                max_length=config.tokenizer_max_length,
                padding=config.pad_language_to,
            ),
            ToDevice(device),
            Normalize(features, config.normalization_mapping, stats),
        ],
        PREPROCESSOR,
    )
    post = Pipeline(
        [Unnormalize(_features(config.output_features), config.normalization_mapping, stats), ToDevice("cpu")],
        POSTPROCESSOR,
    )
    return pre, post


def load_processors(directory: str | Path, device: str | None = None) -> tuple[Pipeline, Pipeline]:
    """Read the pipelines of a checkpoint directory; `device` replaces the preprocessor's saved device."""
    directory = pretrained_dir(directory)
    pre, post = Pipeline.load(directory, PREPROCESSOR), Pipeline.load(directory, POSTPROCESSOR)
    for step in pre.steps:
        if isinstance(step, ToDevice) and device is not None:
            step.device = str(device)
    return pre, post


def robot_names(pre: Pipeline, rename_map: dict[str, str] | None = None) -> Callable[[str], str]:
    """The key a robot sends for each of the policy's keys: undo the preprocessor's own rename step (saved from
    training's `--rename_map`), then undo `rename_map`, which the caller applies in front of the preprocessor."""
    try:
        saved = pre.step(RenameObservations).rename_map
    except KeyError:
        saved = {}
    expects = {policy_key: key for key, policy_key in saved.items()}
    sends = {expected: key for key, expected in (rename_map or {}).items()}

    def robot_name(policy_key: str) -> str:
        expected = expects.get(policy_key, policy_key)
        return sends.get(expected, expected)

    return robot_name
