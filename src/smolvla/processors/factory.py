"""SmolVLA's pre- and post-processor pipelines, built from a policy config, dataset stats and a tokenizer.

Preprocessor: rename → batch → newline → tokenize → device → normalize (LeRobot's order and step names, so LeRobot
loads the files). A robot with fewer cameras or a narrower state than the policy gets two derived steps in memory
(fill the cameras with masked black images, pad the state), rebuilt on load from what the normalizer lists and never
saved: LeRobot's SmolVLA does both by itself. Postprocessor:
unnormalize (crop + unnormalize the whole chunk) → cpu. Both are saved beside the weights in a checkpoint directory
under LeRobot's file names and reload with `load_processors`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from smolvla.errors import CheckpointError, ConfigError
from smolvla.keys import EMPTY_CAMERA_PREFIX, IMAGE_PREFIX, STATE_KEY
from smolvla.model.checkpoint import CONFIG_NAME, pretrained_dir
from smolvla.model.config import SmolVLAConfig
from smolvla.processors.language import NewlineTask, TaskTokenizer, Tokenize
from smolvla.processors.normalize import Normalize, Stats, Unnormalize
from smolvla.processors.observation import AddBatchDim, CheckCameras, PadFeatures, RenameObservations, ToDevice
from smolvla.processors.pipeline import Pipeline

PREPROCESSOR = "policy_preprocessor"
POSTPROCESSOR = "policy_postprocessor"
EMBODIMENTS_FILE = "embodiments.json"


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
    robot: dict[str, list[int]] | None = None,
) -> tuple[Pipeline, Pipeline]:
    """The pipelines that turn raw observations into policy batches and policy chunks into robot actions.

    `robot` is a robot's own features when they are not the policy's (one robot of a several-robot policy): the
    policy key → shape of its state, action and cameras. Its statistics are that wide, its state is zero-padded to
    the policy's after normalization, the cameras it lacks become masked black images, and its actions come back
    cropped to its width. Raises ConfigError when `stats` lack a feature that is normalized (never a silent
    pass-through).
    """
    features = {**_features(config.input_features), **_features(config.output_features)}
    if robot is not None:
        features = {k: {"type": f["type"], "shape": list(robot[k])} for k, f in features.items() if k in robot}
    pre = Pipeline(
        [
            RenameObservations(rename_map),
            AddBatchDim(),
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
    outputs = {k: v for k, v in features.items() if k in config.output_features}
    post = Pipeline([Unnormalize(outputs, config.normalization_mapping, stats), ToDevice("cpu")], POSTPROCESSOR)
    return with_robot_steps(pre, config, fill_missing_cameras), post


def with_robot_steps(pre: Pipeline, config: SmolVLAConfig, fill_missing_cameras: bool = False) -> Pipeline:
    """`pre` plus the derived steps its robot needs (never saved: LeRobot's own SmolVLA pads the state and skips
    absent cameras by itself): the policy's cameras the normalizer does not list (or all, with
    `fill_missing_cameras`) filled with masked black images, and a state narrower than the policy's zero-padded
    after normalization."""
    steps = [s for s in pre.steps if not s.derived]
    spec = robot_features(pre, None, config)
    cameras = {k: list(f.shape) for k, f in config.image_features.items() if not k.startswith(EMPTY_CAMERA_PREFIX)}
    if fill_missing_cameras or any(k not in spec for k in cameras):
        after = next((i + 1 for i, s in enumerate(steps) if isinstance(s, AddBatchDim)), 0)
        steps.insert(after, CheckCameras(cameras, fill_missing=True))
    if spec[STATE_KEY][-1] < config.state_dim:
        after = next((i + 1 for i, s in enumerate(steps) if isinstance(s, Normalize)), len(steps))
        steps.insert(after, PadFeatures({STATE_KEY: config.state_dim}))
    return Pipeline(steps, pre.name)


def robot_features(pre: Pipeline, post: Pipeline | None, config: SmolVLAConfig) -> dict[str, list[int]]:
    """What a robot sends and receives, policy key → shape: its state, cameras and action as the normalizers know
    them (one robot of a several-robot policy has its own widths and cameras), else the policy config's."""
    cameras = [k for k in config.image_features if not k.startswith(EMPTY_CAMERA_PREFIX)]
    spec = {k: list(f.shape) for k, f in {**config.input_features, **config.output_features}.items()}
    spec = {k: v for k, v in spec.items() if k in cameras or not k.startswith(IMAGE_PREFIX)}
    try:
        known = {**pre.step(Normalize).features, **(post.step(Unnormalize).features if post is not None else {})}
    except KeyError:  # a pipeline without normalization: the policy's own features
        return spec
    if any(k in known for k in cameras):  # the normalizer lists cameras: the robot has those
        spec = {k: v for k, v in spec.items() if not k.startswith(IMAGE_PREFIX) or k in known}
    return {k: list(known[k]["shape"]) if k in known else v for k, v in spec.items()}


def _embodiments(directory: Path) -> dict[str, dict]:
    """`embodiments.json` of a checkpoint: robot name → its summary ({} for a one-robot checkpoint)."""
    path = directory / EMBODIMENTS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["embodiments"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is not an embodiments file: {e}") from e


def embodiment_names(directory: str | Path) -> list[str]:
    """The robots a mixed-embodiment checkpoint has processors for ([] for a one-robot checkpoint)."""
    return list(_embodiments(pretrained_dir(directory)))


def load_processors(
    directory: str | Path, device: str | None = None, embodiment: str | None = None
) -> tuple[Pipeline, Pipeline]:
    """Read the pipelines of a checkpoint directory; `device` replaces the preprocessor's saved device. A policy
    trained on several robots needs `embodiment`: which robot's widths, cameras and statistics to use."""
    directory = pretrained_dir(directory)
    names = embodiment_names(directory)
    suffix = ""
    if embodiment is not None:
        if embodiment not in names:
            has = f"embodiments {names}" if names else "one robot's processors only"
            raise ConfigError(f"embodiment {embodiment!r}: {directory} has {has}")
        suffix = f"_{embodiment}"
    elif len(names) > 1:
        raise ConfigError(
            f"{directory} was trained on several robots {names}: choose one (`smolvla serve --embodiment=NAME`, "
            "`smolvla eval --policy.embodiment=NAME`): its state and action widths, cameras and normalization"
        )
    pre, post = Pipeline.load(directory, PREPROCESSOR + suffix), Pipeline.load(directory, POSTPROCESSOR + suffix)
    if (directory / CONFIG_NAME).is_file():  # the robot's derived steps, from the policy it feeds
        pre = with_robot_steps(pre, SmolVLAConfig.from_json(directory / CONFIG_NAME))
    for step in pre.steps:
        if isinstance(step, ToDevice) and device is not None:
            step.device = str(device)
    return pre, post


@dataclass
class EmbodimentProcessors:
    """The processors of a policy trained on several robots: a (pre, post) pair per embodiment, by name.

    Saved as every embodiment's `policy_preprocessor_<name>.json` / `policy_postprocessor_<name>.json` (LeRobot reads
    one with `config_filename=`) listed in `embodiments.json`, plus the first embodiment's under the default names,
    which LeRobot loads by default (smolvla asks which robot instead of guessing).
    """

    pairs: dict[str, tuple[Pipeline, Pipeline]]
    info: dict[str, dict] = field(default_factory=dict)  # per embodiment: widths, cameras (for people and errors)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        for i, (name, (pre, post)) in enumerate(self.pairs.items()):
            for pipeline, base in ((pre, PREPROCESSOR), (post, POSTPROCESSOR)):
                if i == 0:
                    Pipeline(pipeline.steps, base).save(directory)
                Pipeline(pipeline.steps, f"{base}_{name}").save(directory)
        text = json.dumps({"embodiments": {n: self.info.get(n, {}) for n in self.pairs}}, indent=2) + "\n"
        (directory / EMBODIMENTS_FILE).write_text(text)

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> EmbodimentProcessors | None:
        """Every embodiment's pipelines of a checkpoint, or None for a one-robot checkpoint."""
        directory = pretrained_dir(directory)
        info = _embodiments(directory)
        return cls({n: load_processors(directory, device, embodiment=n) for n in info}, info) if info else None


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
