"""Tower-geometry pilots: `bench_metaworld.py` with the tiny backbone's vision tower reshaped.

    .venv/bin/python benchmarks/pilot_tower.py --config benchmarks/configs/metaworld_pilots/tower_64px_shuffle1.yaml \
        --patch_size 8 --tower_image_size 64 --scale_factor 1

The 128 px reach pilot first beat 64 px (55 vs 20 %) but 128 px costs the tiny tower 4x the patches. These pilots
ask whether that gain needs those patches, or only the finer pixels (a 16 px patch at 128 px: the 64 px token count)
or only more tokens per image (no pixel shuffle: 64 tokens from 64 patches). (It needed neither: re-evaluated on 40
other starts, the 128 px checkpoint scores 7.5 %; docs/benchmarks.md.) The geometry is not a `smolvla train` flag
(the tiny preset fixes it; checkpoints carry it in `vlm/config.json`), so this script changes the preset in-process
and records the geometry in the result JSON beside the recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_metaworld
from smolvla.model.backbone import BACKBONE_PRESETS, TINY_BACKBONE


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a bench_metaworld recipe")
    parser.add_argument("--patch_size", type=int, required=True, help="the tower's patch side in pixels (tiny: 8)")
    parser.add_argument("--tower_image_size", type=int, required=True, help="the side its position grid is laid on")
    parser.add_argument("--scale_factor", type=int, required=True, help="pixel shuffle, tokens / scale^2 (tiny: 2)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = BACKBONE_PRESETS[TINY_BACKBONE][0]
    backbone["vision_config"].update(patch_size=args.patch_size, image_size=args.tower_image_size)
    backbone["scale_factor"] = args.scale_factor
    tower = {k: getattr(args, k) for k in ("patch_size", "tower_image_size", "scale_factor")}
    bench_metaworld.run(bench_metaworld.Recipe.load(args.config), notes={"tower": tower})


if __name__ == "__main__":
    main()
