"""Language conditioning: the task string → newline-terminated → token ids and attention mask.

SmolVLA was trained on prompts that end with a newline, so the task gets one appended (once). Tokenization uses the
`tokenizers` library on the checkpoint's own `tokenizer.json`, which is saved into every checkpoint directory so a
policy loads offline. A model trained from scratch can use a small byte-level BPE learnt from its dataset's task
strings (`TaskTokenizer.train`). Truncation to `max_length` is reported with a `TruncationWarning`: an instruction
cut short changes what the policy is asked to do.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from smolvla import hub
from smolvla.errors import BatchError, CheckpointError, ConfigError
from smolvla.keys import LANG_MASK, LANG_TOKENS, TASK_KEY
from smolvla.model.backbone import FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN
from smolvla.processors.pipeline import Batch, ProcessorStep

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
PAD_TOKEN = "<pad>"
IMAGE_TOKENS = {"fake_image_token": FAKE_IMAGE_TOKEN, "global_image_token": GLOBAL_IMAGE_TOKEN}  # tokenizer_config keys


def _abbreviate(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class TruncationWarning(UserWarning):
    """A task string had more tokens than the policy's `tokenizer_max_length`."""


def _tasks(batch: Batch, key: str) -> list[str]:
    if key not in batch:
        raise BatchError(f"batch has no {key!r} string (the language instruction); batch keys: {sorted(batch)}")
    task = batch[key]
    tasks = [task] if isinstance(task, str) else list(task)
    if not all(isinstance(t, str) for t in tasks):
        raise BatchError(f"{key!r} must be a string or a list of strings, got {type(task).__name__}")
    return tasks


class NewlineTask(ProcessorStep):
    """Append "\\n" to the task unless it already ends with one (SmolVLA's prompt format)."""

    registry_name = "smolvla_new_line_processor"

    def __call__(self, batch: Batch) -> Batch:
        if TASK_KEY not in batch:
            return batch
        task = batch[TASK_KEY]
        fix = lambda t: t if t.endswith("\n") else t + "\n"  # noqa: E731
        return {**batch, TASK_KEY: fix(task) if isinstance(task, str) else [fix(t) for t in _tasks(batch, TASK_KEY)]}


class TaskTokenizer:
    """A `tokenizers.Tokenizer` plus its pad id: what the language step needs, without transformers."""

    def __init__(self, tokenizer: Any, pad_token_id: int):
        self.tokenizer = tokenizer
        self.pad_token_id = int(pad_token_id)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @classmethod
    def from_directory(cls, directory: str | Path) -> TaskTokenizer:
        """Load `tokenizer.json` (pad token from `tokenizer_config.json` when present, as transformers does)."""
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"no {TOKENIZER_FILE} in {directory}")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises bare Exception subclasses on bad JSON
            raise CheckpointError(f"cannot read tokenizer {path}: {e}") from e
        pad = None
        config_path = directory / TOKENIZER_CONFIG_FILE
        if config_path.is_file():
            pad = json.loads(config_path.read_text()).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
        pad_id = tokenizer.token_to_id(pad) if pad else None
        if pad_id is None:
            pad_id = tokenizer.token_to_id(PAD_TOKEN)
        return cls(tokenizer, 0 if pad_id is None else pad_id)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512) -> TaskTokenizer:
        """A byte-level BPE learnt from task strings, for models trained from scratch (id 0 is the pad token)."""
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(sorted(set(texts)), trainer)
        # SmolVLM's image tokens, appended after the learnt vocabulary (no instruction's ids change): LeRobot's
        # SmolVLA reads their ids from whatever tokenizer the backbone directory holds.
        tokenizer.add_special_tokens([AddedToken(t, special=True) for t in IMAGE_TOKENS.values()])
        return cls(tokenizer, tokenizer.token_to_id(PAD_TOKEN))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        pad = self.tokenizer.id_to_token(self.pad_token_id)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": pad, "padding_side": "right"}
        config |= {key: token for key, token in IMAGE_TOKENS.items() if self.tokenizer.token_to_id(token) is not None}
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def encode(
        self, texts: Sequence[str], max_length: int, padding: str = "max_length", padding_side: str = "right"
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Token ids (B, L) int64, attention mask (B, L) bool, and the indices of texts that were truncated."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = [e.ids for e in encodings]
        truncated = [i for i, seq in enumerate(ids) if len(seq) > max_length]
        ids = [seq[:max_length] for seq in ids]
        width = max_length if padding == "max_length" else max((len(s) for s in ids), default=0)
        tokens = np.full((len(ids), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=bool)
        for row, seq in enumerate(ids):
            span = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
            tokens[row, span] = seq
            mask[row, span] = True
        return torch.from_numpy(tokens), torch.from_numpy(mask), truncated


class Tokenize(ProcessorStep):
    """Task string(s) → `observation.language.tokens` / `attention_mask` (LeRobot's `tokenizer_processor`)."""

    registry_name = "tokenizer_processor"

    def __init__(
        self,
        tokenizer: TaskTokenizer,
        tokenizer_name: str = "",
        max_length: int = 48,
        padding: str = "max_length",
        padding_side: str = "right",
        truncation: bool = True,
        task_key: str = TASK_KEY,
    ):
        if padding not in ("max_length", "longest"):
            raise ConfigError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        if padding_side not in ("right", "left"):
            raise ConfigError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if not truncation:
            raise ConfigError("truncation=False is not supported: the policy needs at most max_length tokens")
        self.tokenizer = tokenizer
        self.tokenizer_name = tokenizer_name
        self.max_length = int(max_length)
        self.padding = padding
        self.padding_side = padding_side
        self.task_key = task_key

    def __call__(self, batch: Batch) -> Batch:
        texts = _tasks(batch, self.task_key)
        tokens, mask, truncated = self.tokenizer.encode(texts, self.max_length, self.padding, self.padding_side)
        if truncated:
            warnings.warn(
                f"{len(truncated)} of {len(texts)} task strings have more than max_length={self.max_length} tokens "
                f"and were truncated, e.g. {_abbreviate(texts[truncated[0]])!r}",
                TruncationWarning,
                stacklevel=2,
            )
        if isinstance(batch[self.task_key], str):  # an unbatched observation stays unbatched
            tokens, mask = tokens[0], mask[0]
        return {**batch, LANG_TOKENS: tokens, LANG_MASK: mask}

    def get_config(self) -> dict[str, Any]:
        return {
            "tokenizer_name": self.tokenizer_name,
            "max_length": self.max_length,
            "task_key": self.task_key,
            "padding_side": self.padding_side,
            "padding": self.padding,
            "truncation": True,
        }

    def save_files(self, directory: Path) -> None:
        self.tokenizer.save(directory)

    @classmethod
    def from_config(cls, config: dict[str, Any], state: dict[str, Any], directory: Path | None) -> Tokenize:
        """The tokenizer comes from the pipeline's directory, else from `tokenizer_name`: a local directory, or a
        Hugging Face repo id resolved through the cache (what lerobot-train writes: the backbone's id)."""
        name = config.get("tokenizer_name", "")
        candidates = [d for d in (directory, Path(name) if name else None) if d is not None]
        hub_problem = ""
        if name and hub.is_repo_id(name):
            try:
                candidates.append(hub.resolve(name))
            except hub.HubError as e:
                hub_problem = f"; {e}"
        for candidate in candidates:
            if (candidate / TOKENIZER_FILE).is_file():
                tokenizer = TaskTokenizer.from_directory(candidate)
                break
        else:
            raise CheckpointError(
                f"tokenizer {name!r} not found: no {TOKENIZER_FILE} in {[str(c) for c in candidates]}{hub_problem}"
            )
        kwargs = {k: v for k, v in config.items() if k != "tokenizer_name"}
        try:
            return cls(tokenizer, tokenizer_name=name, **kwargs)
        except TypeError as e:
            raise ConfigError(f"processor step {cls.registry_name!r}: bad config {config}: {e}") from e
