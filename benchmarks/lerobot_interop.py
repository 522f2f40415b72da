"""smolvla ↔ LeRobot 0.6.1, both directions, offline, with the real LeRobot (../shared/lerobot_ref, README there).

    bash ../shared/lerobot_ref/lerobot_ref_env.sh            # builds /tmp/lerobot-ref once (~1 min)
    .venv/bin/python benchmarks/lerobot_interop.py [--work /tmp/lerobot-interop]

1. A LeRobot-layout replica (the parity fixture's weights as `lerobot/smolvla_tiny`, backbone and tokenizer named by
   the hub id `HuggingFaceTB/tiny-vlm`, both in a fabricated Hugging Face cache) is fine-tuned by `smolvla train
   --policy.path=lerobot/smolvla_tiny --rename_map=...` on a top/wrist dataset; LeRobot loads the result as is.
2. LeRobot writes a checkpoint with its own processors (`make_smolvla_pre_post_processors`); smolvla loads it.
3. A tiny policy trained from scratch by smolvla (learnt tokenizer, backbone in vlm/); LeRobot loads it given
   `vlm_model_name` and the tokenizer's `tokenizer_name` = <checkpoint>/vlm.
4. 1's fine-tune through LoRA (`--peft.method_type=LORA`): LeRobot loads the adapter checkpoint (`use_peft: true`,
   base by hub id) with peft's `PeftModel.from_pretrained`, as its policy factory does (needs `peft` in
   /tmp/lerobot-ref: `/tmp/lerobot-ref/bin/python -m pip install peft`); smolvla merges it into the base.
Each: the same observation and noise through both libraries' policy and pipelines; max |Δ| of the actions in robot
units is printed (target ≤ 1e-4) and written to benchmarks/results/lerobot_interop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

LEROBOT_PY = Path("/tmp/lerobot-ref/bin/python")
SIDE = Path(__file__).resolve().parents[2] / "shared" / "lerobot_ref"

LEROBOT_CODE = r'''
import json, os, sys
sys.path.insert(0, {side!r})
import lerobot_side
import torch
from safetensors.torch import load_file, save_file
lerobot_side.patch_processor()
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
from lerobot.processor import PolicyProcessorPipeline
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
task = json.loads(sys.argv[1])
io = load_file(task["io"])
raw = {{k: v for k, v in io.items() if k.startswith("observation.")}}
raw["task"] = "pick up the cube"
post_kw = dict(to_transition=policy_action_to_transition, to_output=transition_to_policy_action)
if task["mode"] == "write":  # LeRobot writes a checkpoint with its own processors
    from huggingface_hub import snapshot_download
    policy = SmolVLAPolicy.from_pretrained(snapshot_download(task["repo"], local_files_only=True)).eval()
    g = torch.Generator().manual_seed(3)
    stats = {{"observation.state": {{"mean": torch.randn(7, generator=g), "std": torch.rand(7, generator=g) + 0.5}},
             "action": {{"mean": torch.randn(5, generator=g), "std": torch.rand(5, generator=g) + 0.5}}}}
    pre, post = make_smolvla_pre_post_processors(policy.config, dataset_stats=stats)
    for thing in (policy, pre, post):
        thing.save_pretrained(task["out"])
elif task["mode"] == "peft":  # LeRobot loads a smolvla adapter checkpoint as its factory does (use_peft: true)
    from huggingface_hub import snapshot_download
    from peft import PeftConfig, PeftModel
    assert PreTrainedConfig.from_pretrained(task["ckpt"]).use_peft
    base = PeftConfig.from_pretrained(task["ckpt"]).base_model_name_or_path
    base = base if os.path.isdir(base) else snapshot_download(base, local_files_only=True)
    policy = PeftModel.from_pretrained(SmolVLAPolicy.from_pretrained(base), task["ckpt"]).eval()
    pre = PolicyProcessorPipeline.from_pretrained(task["ckpt"], config_filename="policy_preprocessor.json")
    post = PolicyProcessorPipeline.from_pretrained(task["ckpt"], config_filename="policy_postprocessor.json", **post_kw)
else:  # LeRobot loads a smolvla checkpoint
    cfg = PreTrainedConfig.from_pretrained(task["ckpt"])
    overrides = {{}}
    if task.get("vlm_dir"):
        cfg.vlm_model_name = task["vlm_dir"]
        overrides = {{"tokenizer_processor": {{"tokenizer_name": task["vlm_dir"]}}}}
    policy = SmolVLAPolicy.from_pretrained(task["ckpt"], config=cfg).eval()
    pre = PolicyProcessorPipeline.from_pretrained(task["ckpt"], config_filename="policy_preprocessor.json",
                                                  overrides=overrides)
    post = PolicyProcessorPipeline.from_pretrained(task["ckpt"], config_filename="policy_postprocessor.json", **post_kw)
with torch.no_grad():
    actions = post(policy.predict_action_chunk(pre(dict(raw)), noise=io["noise"]))
save_file({{"actions": actions.float().contiguous()}}, task["actions"])
'''


def lerobot(task: dict) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = LEROBOT_CODE.format(side=str(SIDE))
    subprocess.run([str(LEROBOT_PY), "-c", code, json.dumps(task)], check=True, env=env, cwd="/tmp",
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/lerobot-interop")
    args = parser.parse_args()
    if not LEROBOT_PY.exists():
        sys.exit(f"LeRobot is not built: bash {SIDE / 'lerobot_ref_env.sh'} (see the README there)")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    import tests.test_lerobot_dropin as dropin
    from smolvla.cli import main as smolvla
    from smolvla.policy import SmolVLAPolicy
    from smolvla.processors import ImagesToFloat, load_processors

    os.environ["HF_HUB_CACHE"] = str(work / "hf" / "hub")  # after the test module (its conftest sets its own)

    def actions(ckpt: Path, raw: dict, noise: torch.Tensor) -> torch.Tensor:
        policy = SmolVLAPolicy.from_pretrained(ckpt).eval()
        pre, post = load_processors(ckpt)
        with torch.no_grad():
            return post({"action": policy.predict_chunk(pre(dict(raw)), noise=noise)})["action"]

    def observation(cameras: dict, state_dim: int, chunk: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        raw = {"observation.state": torch.from_numpy(rng.normal(size=state_dim).astype(np.float32)),
               "task": "pick up the cube"}  # fmt: skip
        raw |= {k: torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for k, (h, w) in cameras.items()}
        noise = torch.randn(1, chunk, 32, generator=torch.Generator().manual_seed(7))
        return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in ImagesToFloat()(raw).items()}, noise

    results = {}
    # 1. smolvla fine-tunes a hub checkpoint with --rename_map; LeRobot loads the result as is.
    dropin.lerobot_replica(work, work / "hf" / "hub")
    dataset = dropin.write_dataset(work / "so101_data")
    flags = [f"--policy.path={dropin.POLICY_ID}", f"--dataset.root={dataset}", "--steps=3", "--batch_size=2",
             f"--rename_map={json.dumps(dropin.RENAME)}", "--num_workers=0", "--progress=false", "--val_freq=0",
             "--dataset.fill_missing_cameras=true",
             f"--output_dir={work / 'run'}"]  # fmt: skip
    assert smolvla(["train", *flags]) == 0
    ckpt = (work / "run" / "checkpoints" / "last" / "pretrained_model").resolve()
    raw, noise = observation(dropin.CAMERAS, 7, 10)
    ours = actions(ckpt, raw, noise)
    save_file({**{k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}, "noise": noise}, str(work / "io1.st"))
    lerobot({"mode": "load", "ckpt": str(ckpt), "io": str(work / "io1.st"), "actions": str(work / "lr1.st")})
    results["smolvla fine-tune (hub backbone) -> LeRobot, as is"] = (ours - load_file(work / "lr1.st")["actions"])
    # 2. LeRobot writes a checkpoint with its own processors; smolvla loads it.
    renamed = {dropin.RENAME[k]: v for k, v in raw.items() if k in dropin.RENAME} | {
        k: v for k, v in raw.items() if k not in dropin.RENAME}
    # All three of the replica's cameras: LeRobot skips an absent one silently, smolvla asks for it (or for
    # --dataset.fill_missing_cameras at training), so the two only compare on a complete observation.
    renamed[dropin.CAMERA3] = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(5))
    tensors = {k: v for k, v in renamed.items() if isinstance(v, torch.Tensor)}
    save_file({**tensors, "noise": noise}, str(work / "io2.st"))
    lerobot({"mode": "write", "repo": dropin.POLICY_ID, "out": str(work / "lerobot_written"),
             "io": str(work / "io2.st"), "actions": str(work / "lr2.st")})  # fmt: skip
    ours = actions(work / "lerobot_written", renamed, noise)
    results["LeRobot checkpoint + its processors -> smolvla"] = ours - load_file(work / "lr2.st")["actions"]
    # 3. smolvla trains from scratch (tiny, learnt tokenizer); LeRobot loads it given <ckpt>/vlm.
    scratch = [f"--dataset.root={dataset}", "--steps=3", "--batch_size=2", "--num_workers=0", "--progress=false",
               "--val_freq=0", "--policy.chunk_size=10", f"--output_dir={work / 'scratch'}"]  # fmt: skip
    assert smolvla(["train", *scratch]) == 0
    moved = shutil.copytree(work / "scratch" / "checkpoints" / "last" / "pretrained_model", work / "moved")
    raw, noise = observation(dropin.CAMERAS, 7, 10, seed=1)
    ours = actions(moved, raw, noise)
    save_file({**{k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}, "noise": noise}, str(work / "io3.st"))
    lerobot({"mode": "load", "ckpt": str(moved), "vlm_dir": str(moved / "vlm"), "io": str(work / "io3.st"),
             "actions": str(work / "lr3.st")})  # fmt: skip
    results["smolvla from scratch -> LeRobot, vlm_model_name/tokenizer_name = <ckpt>/vlm"] = (
        ours - load_file(work / "lr3.st")["actions"])
    # 4. smolvla fine-tunes the hub checkpoint through LoRA; LeRobot loads the adapter (base by hub id) as is.
    lora = ["--peft.method_type=LORA", "--peft.r=4", "--policy.optimizer_lr=1e-2", f"--output_dir={work / 'lora'}"]
    assert smolvla(["train", *flags[:-1], *lora]) == 0
    adapter = (work / "lora" / "checkpoints" / "last" / "pretrained_model").resolve()
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == dropin.POLICY_ID
    raw, noise = observation(dropin.CAMERAS, 7, 10, seed=2)
    ours = actions(adapter, raw, noise)
    save_file({**{k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}, "noise": noise}, str(work / "io4.st"))
    lerobot({"mode": "peft", "ckpt": str(adapter), "io": str(work / "io4.st"), "actions": str(work / "lr4.st")})
    results["smolvla LoRA adapter (base by hub id) -> LeRobot PeftModel, as is"] = (
        ours - load_file(work / "lr4.st")["actions"])
    table = {name: float(diff.abs().max()) for name, diff in results.items()}
    print("| direction | max abs action difference (robot units) |\n|---|---|")
    for name, value in table.items():
        print(f"| {name} | {value:.2e} |")
    results_file = Path(__file__).resolve().parent / "results" / "lerobot_interop.json"
    for path in (work / "interop.json", results_file):
        path.write_text(json.dumps(table, indent=2) + "\n")
    assert all(v <= 1e-4 for v in table.values()), table


if __name__ == "__main__":
    main()
