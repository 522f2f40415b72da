"""Hugging Face Hub ids wherever smolvla accepts a path, resolved as LeRobot resolves them.

`lerobot/smolvla_base`, `HuggingFaceTB/SmolVLM2-500M-Video-Instruct` or `me/so101_data` name a repository; the files
come from the standard Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`),
downloaded into it when online and read from it only under `HF_HUB_OFFLINE=1`. A local directory of the same name
always wins. `org/name@revision` pins a branch, tag or commit (default `main`). The environment is read at each call,
so a process (or a test) that changes it is obeyed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

from smolvla.errors import SmolVLAError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
TRUE = ("1", "true", "yes", "on")


class HubError(SmolVLAError, ValueError):
    """A repository id that is neither on disk, nor in the cache, nor (online) on the Hub; or a corrupt cache entry."""


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def is_repo_id(text: str | Path) -> bool:
    """Shaped like `org/name[@revision]` and not an existing local path."""
    name = str(text).split("@", 1)[0]
    return bool(REPO_ID.match(name)) and not Path(text).expanduser().exists()


def resolve(path_or_id: str | Path, repo_type: str = "model") -> Path:
    """The local directory `path_or_id` names, or the cache snapshot of the repository it names."""
    local = Path(path_or_id).expanduser()
    if local.exists():
        return local
    text = str(path_or_id)
    if not is_repo_id(text):
        raise HubError(f"{text} does not exist (and is not a Hugging Face repo id, org/name)")
    repo_id, _, revision = text.partition("@")
    try:
        snapshot = huggingface_hub.snapshot_download(
            repo_id, repo_type=repo_type, revision=revision or None, cache_dir=cache_dir(), local_files_only=offline()
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError, ValueError) as e:
        where = f"the Hugging Face cache {cache_dir()}" + (" (HF_HUB_OFFLINE=1: no download)" if offline() else "")
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{repo_type} {text!r} is not a local directory and not in {where}: {reason}") from e
    snapshot = Path(snapshot)
    broken = sorted(p.relative_to(snapshot) for p in snapshot.rglob("*") if p.is_symlink() and not p.exists())
    if broken:
        raise HubError(
            f"the cache entry of {repo_type} {text!r} ({snapshot}) is corrupt: {[str(p) for p in broken[:5]]} point "
            "to missing blobs; delete it and download again"
        )
    return snapshot
