"""Backbone pilots: `bench_metaworld.py` with the tiny preset's backbone reshaped (tower geometry, width, depth).

    .venv/bin/python benchmarks/pilot_backbone.py \
        --config benchmarks/configs/metaworld_pilots/tower_64px_shuffle1.yaml --set scale_factor=1

`--set PATH=VALUE` (repeatable) changes one field of the tiny backbone's SmolVLM config, `PATH` dotted into it
(`vision_config.patch_size=16`, `text_config.hidden_size=128`). The tower pilots asked whether the 128 px reach
pilot's first gain (55 vs 20 %, which did not replicate: docs/benchmarks.md) needed the patches or only the pixels;
the width pilot asks whether the tiny model is too small to read a goal marker. The backbone is not a
`smolvla train` flag (the tiny preset fixes it; checkpoints carry theirs in `vlm/config.json`), so this script
changes the preset in-process and records the changes in the result JSON beside the recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_metaworld
from smolvla.errors import ConfigError
from smolvla.model.backbone import BACKBONE_PRESETS, TINY_BACKBONE


def reshape(config: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply `PATH=VALUE` assignments to `config` in place; the applied values, by path."""
    applied = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not sep or not isinstance(node, dict) or leaf not in node or value is None:
            raise ConfigError(
                f"--set expects PATH=VALUE, PATH an existing backbone field, VALUE JSON; got {assignment!r}"
            )
        node[leaf] = applied[path] = value
    return applied


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a bench_metaworld recipe")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="a backbone field to change")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_metaworld.exit_on_sigterm()
    try:
        backbone = reshape(BACKBONE_PRESETS[TINY_BACKBONE][0], args.set)
    except ConfigError as error:
        sys.exit(f"pilot_backbone: {error}")
    bench_metaworld.run(bench_metaworld.Recipe.load(args.config), notes={"backbone": backbone})


if __name__ == "__main__":
    main()
