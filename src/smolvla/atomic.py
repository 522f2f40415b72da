"""Atomic directory writes: build beside the target, then swap in, so readers never see half a result."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def temp_directory_for(target: Path, staging: Path | None = None) -> Path:
    """A fresh hidden directory next to `target`, or inside `staging` (a sibling of `target`: the same filesystem,
    so the final rename is atomic, and a place the next run cleans)."""
    place = target.parent if staging is None else staging
    place.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=place))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make every saved checkpoint or dataset private to its writer
    return tmp


def remove_stale_temps(target: Path, place: Path | None = None) -> list[Path]:
    """Delete what a killed writer of `target` left in `place` (default: beside it): `.<name>.tmp-*` and
    `.<name>.old-*` directories. Returns what was removed."""
    place = Path(target).parent if place is None else Path(place)
    name = Path(target).name
    stale = [p for pattern in (f".{name}.tmp-*", f".{name}.old-*") for p in place.glob(pattern) if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def replace_directory(tmp: Path, target: Path) -> None:
    """Move the finished `tmp` to `target`, replacing an existing `target` only once `tmp` is complete."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def atomic_directory(target: Path, write: Callable[[Path], None]) -> None:
    """Build a directory with `write(tmp)` and swap it in as `target`; on error nothing changes."""
    target = Path(target)
    tmp = temp_directory_for(target)
    try:
        write(tmp)
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> Path:
    """Write a file via a temp file and rename, so a kill never leaves it half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG via a temp file and rename, then close it."""
    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi, format="png")
    import matplotlib.pyplot as plt  # the optional `sim` extra (charts): only callers that draw have it

    plt.close(fig)
    os.replace(tmp, path)
    return path
