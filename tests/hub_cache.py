"""A Hugging Face cache fabricated on disk, laid out as `huggingface_hub` writes it (no network, ever)."""

import hashlib
import os
import shutil
from pathlib import Path


def cache_repo(cache: Path, repo_id: str, source: Path, repo_type: str = "model", ref: str = "main") -> Path:
    """Put the files of `source` into `cache` as repository `repo_id`: blobs by content hash, a snapshot of
    symlinks named by a commit hash, and `refs/<ref>` pointing at it. Returns the snapshot directory."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{ref}:{source}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot
