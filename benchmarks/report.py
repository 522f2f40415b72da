"""Shared output of the benchmark scripts: a markdown table on stdout and a JSON file under benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smolvla.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"


def report(name: str, machine: dict[str, Any], rows: list[dict[str, Any]], columns: dict[str, str]) -> Path:
    """Print `rows` as a markdown table (`columns`: header → row key) and write them with `machine` to JSON."""
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in columns.values()) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    atomic_write_text(out, json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return out
