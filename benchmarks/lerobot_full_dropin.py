"""A LeRobot user's first command at full size, offline, checked against the real LeRobot 0.6.1.

    bash ../shared/lerobot_ref/lerobot_ref_env.sh            # builds /tmp/lerobot-ref once (~2 min)
    .venv/bin/python benchmarks/lerobot_full_dropin.py [--work /tmp/lerobot-full-dropin] [--ckpt /tmp/lr_full]

The tiny version of this is benchmarks/lerobot_interop.py (and tests/test_lerobot_dropin.py); this one runs the
`smolvla_base` architecture (450 M parameters, random weights) on the CPU, one heavy process at a time:

1. LeRobot builds a seeded random-weight full-size checkpoint (`lerobot_ref_bench.py --preset full`) unless --ckpt
   already holds one; its vlm/ is the SmolVLM2-500M config plus a placeholder word-level tokenizer.
2. A replica of `lerobot/smolvla_base` goes into a temporary Hugging Face cache, laid out as the hub holds it:
   config.json (cameras observation.images.camera1..3, 6-D state and action, `vlm_model_name` =
   HuggingFaceTB/SmolVLM2-500M-Video-Instruct), model.safetensors, and both processor pipelines written by LeRobot
   itself (`make_smolvla_pre_post_processors(...).save_pretrained`). The backbone config and tokenizer are cached
   under the backbone's hub id; nothing is copied into the checkpoint.
3. smolvla's `DatasetWriter` writes a user's 6-D dataset with video cameras named `top` and `wrist` (and a copy
   with a third camera, `side`).
4. `smolvla train --policy.path=lerobot/smolvla_base --rename_map='{"observation.images.top":
   "observation.images.camera1", "observation.images.wrist": "observation.images.camera2"}' --steps=2
   --batch_size=1 --num_workers=0 --val_freq=0`, in a fresh process. The checkpoint also expects camera3, which this
   dataset lacks (LeRobot trains on the cameras present; smolvla asks first). Three runs, each recorded, refusal
   message included:
   top_wrist        the command as is (expected: refused, naming the fill flag);
   top_wrist_filled the same plus the fill flag `smolvla train --help` lists (`...fill_missing_cameras=true`), if any;
   top_wrist_side   the three-camera copy, `side` renamed to camera3 as well.
5. For each checkpoint trained: smolvla's evaluation agent (`AgentFactory`, what `smolvla eval --policy.path`
   builds) and its gRPC server (`PolicyServer` + `PolicyClient`, the robot keeping its own camera names) each
   produce an action chunk for frame 0 of the dataset.
6. LeRobot loads the result as is (`SmolVLAPolicy.from_pretrained`, `PolicyProcessorPipeline.from_pretrained` pre
   and post) and computes the actions in robot units for the same raw observation and the same noise. A
   preprocessor step LeRobot does not know is reported, then left out so the numbers can still be compared.

Everything runs under HF_HUB_OFFLINE=1 with HF_HUB_CACHE under --work, OMP_WAIT_POLICY=PASSIVE and 2 torch threads.
Prints a table and writes benchmarks/results/lerobot_full_dropin.json (stage wall times, max |Δ| of the actions,
parameter count, machine); the run fails if an action difference exceeds 1e-4 or the three-camera run
does not produce both comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEROBOT_PY = Path("/tmp/lerobot-ref/bin/python")
SIDE = REPO.parent / "shared" / "lerobot_ref"
RESULTS = REPO / "benchmarks" / "results" / "lerobot_full_dropin.json"

POLICY_ID = "lerobot/smolvla_base"
BACKBONE_ID = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
BASE_CAMERAS = [f"observation.images.camera{i}" for i in (1, 2, 3)]
RENAME = {
    "observation.images.top": "observation.images.camera1",
    "observation.images.wrist": "observation.images.camera2",
}
SIDE_RENAME = {"observation.images.side": "observation.images.camera3"}
CAMERAS = {"observation.images.top": (96, 128), "observation.images.wrist": (64, 64)}  # the robot's (H, W)
SIDE_CAMERA = {"observation.images.side": (96, 128)}
# The placeholder tokenizer is word-level over "w<i>" (plus SmolVLM2's special tokens): English words would all be
# <unk>, so the instruction uses vocabulary words to exercise the language embeddings.
TASK = "w1523 w87 w30211 w4096 w12"
SEED = 7  # flow-matching noise torch.randn(1, chunk, max_action_dim) from this seed: agent, server and LeRobot
THREADS = 2
TOLERANCE = 1e-4

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE",
       "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip

LEROBOT_CODE = r"""
import json, os, sys, tempfile, time
sys.path.insert(0, {side!r})
import lerobot_side
import torch
from safetensors.torch import load_file, save_file
torch.set_num_threads({threads})
lerobot_side.patch_processor()
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
from lerobot.processor import PolicyProcessorPipeline, ProcessorStepRegistry
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
task = json.loads(sys.argv[1])
if task["mode"] == "processors":  # what lerobot-train saves beside the weights, for smolvla_base's 6-D robot
    cfg = PreTrainedConfig.from_pretrained(task["dir"])
    g = torch.Generator().manual_seed(11)
    stats = {{}}
    for key in ("observation.state", "action"):
        mean, std = torch.randn(6, generator=g), torch.rand(6, generator=g) + 0.5
        stats[key] = {{"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std}}
    pre, post = make_smolvla_pre_post_processors(cfg, dataset_stats=stats)
    pre.save_pretrained(task["dir"])
    post.save_pretrained(task["dir"])
    sys.exit(0)
io = load_file(task["io"])
raw = {{k: v for k, v in io.items() if k.startswith("observation.")}}
raw["task"] = task["task"]
t0 = time.perf_counter()
policy = SmolVLAPolicy.from_pretrained(task["ckpt"]).eval()  # as is: the backbone by hub id, from the cache
info = {{}}
try:
    pre = PolicyProcessorPipeline.from_pretrained(task["ckpt"], config_filename="policy_preprocessor.json")
except Exception as e:  # a step LeRobot does not know: record it, then compare without that step
    info["as_is_error"] = f"{{type(e).__name__}}: {{e}}".splitlines()[0].split(" Available steps")[0]
    spec = json.loads(open(os.path.join(task["ckpt"], "policy_preprocessor.json")).read())
    known = ProcessorStepRegistry._registry
    info["dropped_steps"] = [s["registry_name"] for s in spec["steps"] if s.get("registry_name") not in known]
    if not info["dropped_steps"]:
        raise
    spec["steps"] = [s for s in spec["steps"] if s.get("registry_name") in known]
    copy = tempfile.mkdtemp(prefix="lerobot_pre_")
    for name in os.listdir(task["ckpt"]):
        if name != "policy_preprocessor.json":
            os.symlink(os.path.join(task["ckpt"], name), os.path.join(copy, name))
    open(os.path.join(copy, "policy_preprocessor.json"), "w").write(json.dumps(spec))
    pre = PolicyProcessorPipeline.from_pretrained(copy, config_filename="policy_preprocessor.json")
post = PolicyProcessorPipeline.from_pretrained(task["ckpt"], config_filename="policy_postprocessor.json",
                                               to_transition=policy_action_to_transition,
                                               to_output=transition_to_policy_action)
load_s = time.perf_counter() - t0
t0 = time.perf_counter()
with torch.no_grad():
    actions = post(policy.predict_action_chunk(pre(dict(raw)), noise=io["noise"]))
predict_s = time.perf_counter() - t0
save_file({{"actions": actions.float().contiguous()}}, task["actions"])
info |= {{"load_s": load_s, "predict_s": predict_s, "params": sum(p.numel() for p in policy.parameters()),
          "cameras": list(policy.config.image_features), "vlm_model_name": policy.config.vlm_model_name}}
print(json.dumps(info))
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], logfile: Path, env: dict[str, str], cwd: Path | str = REPO) -> tuple[int, float]:
    """Run `cmd` with stdout and stderr to `logfile`; (exit status, wall seconds)."""
    t0 = time.perf_counter()
    with open(logfile, "w") as out:
        rc = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def check(rc: int, logfile: Path, what: str) -> None:
    if rc != 0:
        tail = logfile.read_text().splitlines()[-30:]
        sys.exit(f"{what} failed (exit {rc}); last lines of {logfile}:\n" + "\n".join(tail))


def lerobot(task: dict, logfile: Path, env: dict[str, str]) -> tuple[int, float]:
    code = LEROBOT_CODE.format(side=str(SIDE), threads=THREADS)
    return run([str(LEROBOT_PY), "-c", code, json.dumps(task)], logfile, env, cwd="/tmp")


def error_line(logfile: Path) -> str:
    lines = logfile.read_text().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1].strip()


def build_checkpoint(ckpt: Path, work: Path, env: dict[str, str]) -> float | None:
    """LeRobot's seeded random-weight full-size checkpoint (seconds spent, None when --ckpt already held one)."""
    if (ckpt / "model.safetensors").is_file() and (ckpt / "vlm" / "tokenizer.json").is_file():
        return None
    bench = SIDE / "lerobot_ref_bench.py"
    cmd = [str(LEROBOT_PY), str(bench), "--preset", "full", "--out", str(ckpt), "--no-bench"]
    rc, seconds = run(cmd, work / "build.log", env, cwd="/tmp")
    check(rc, work / "build.log", "building the full-size LeRobot checkpoint")
    return seconds


def write_replica(ckpt: Path, work: Path, cache: Path, env: dict[str, str]) -> None:
    """`lerobot/smolvla_base` and its backbone `HuggingFaceTB/SmolVLM2-500M-Video-Instruct` in the HF cache."""
    from tests.hub_cache import cache_repo

    cache_repo(cache, BACKBONE_ID, ckpt / "vlm")  # config.json + the placeholder tokenizer, by hub id
    replica = work / "smolvla_base"
    replica.mkdir()
    config = json.loads((ckpt / "config.json").read_text())
    bench_cams = [k for k, f in config["input_features"].items() if f["type"] == "VISUAL"]
    config["input_features"] = {
        "observation.state": {"type": "STATE", "shape": [6]},
        **{k: {"type": "VISUAL", "shape": [3, 256, 256]} for k in BASE_CAMERAS},
    }
    # smolvla_base's own values. `load_vlm_weights` stays false: true makes LeRobot first load SmolVLM2's pretrained
    # weights (in bf16) from the cache, and this backbone is a placeholder without weights.
    config |= {"vlm_model_name": BACKBONE_ID, "pad_language_to": "max_length", "num_expert_layers": 0,
               "prefix_length": 0}  # fmt: skip
    assert config["output_features"]["action"]["shape"] == [6], config["output_features"]
    log(f"replica config: cameras {bench_cams} -> {BASE_CAMERAS}, vlm_model_name {BACKBONE_ID}")
    (replica / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    (replica / "model.safetensors").symlink_to(ckpt / "model.safetensors")  # cache_repo copies the bytes
    rc, _ = lerobot({"mode": "processors", "dir": str(replica)}, work / "processors.log", env)
    check(rc, work / "processors.log", "LeRobot writing the replica's processors")
    spec = json.loads((replica / "policy_preprocessor.json").read_text())
    names = [s.get("config", {}).get("tokenizer_name") for s in spec["steps"]]
    assert BACKBONE_ID in names, spec
    assert not (replica / "tokenizer.json").exists()
    cache_repo(cache, POLICY_ID, replica)


def write_dataset(root: Path, cameras: dict[str, tuple[int, int]]) -> Path:
    """A user's SO-101-like dataset: 6-D state and action, video cameras under the user's own names."""
    from tests.test_lerobot_dropin import write_dataset as user_dataset

    return user_dataset(root, cameras, state_dim=6, action_dim=6, task=TASK)


def train(dataset: Path, rename: dict[str, str], extra: list[str], out: Path, logfile: Path, env: dict[str, str]):
    """The user's command, in a fresh process: (exit status, wall seconds)."""
    flags = [f"--policy.path={POLICY_ID}", f"--dataset.root={dataset}", f"--rename_map={json.dumps(rename)}",
             "--steps=2", "--batch_size=1", "--num_workers=0", "--val_freq=0", *extra,
             f"--output_dir={out}"]  # fmt: skip
    log("smolvla train " + " ".join(flags))
    return run([sys.executable, "-m", "smolvla.cli", "train", *flags], logfile, env)


def first_frame(dataset: Path) -> dict:
    """Frame 0 of the dataset as the robot sends it: state float32, each camera uint8 (H, W, 3), the task."""
    import torch

    from smolvla.data import LeRobotDataset

    item = LeRobotDataset(dataset)[0]
    raw = {"observation.state": item["observation.state"].float(), "task": item["task"]}
    for key in item:
        if key.startswith("observation.images.") and not key.endswith("_is_pad"):
            raw[key] = (item[key] * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return raw


def train_flags(env: dict[str, str]) -> list[str]:
    """The flags `smolvla train --help` lists."""
    text = subprocess.run([sys.executable, "-m", "smolvla.cli", "train", "--help"], env=env, cwd=REPO,
                          capture_output=True, text=True).stdout  # fmt: skip
    return [line.strip().split("=")[0] for line in text.splitlines() if line.strip().startswith("--")]


def refusal_problems(refusal: str, flags: list[str]) -> list[str]:
    """What is wrong with a refusal message: no way out named, flags it suggests that do not exist, an empty
    --rename_map. (Refusing is smolvla's documented choice — a camera the checkpoint expects and the data lacks
    becomes a masked empty camera only when asked, where LeRobot trains on the cameras present — so the refusal itself
    is not a problem; a refusal that does not say how to proceed is.)"""
    problems = []
    if "fill_missing_cameras=true" not in refusal:
        problems.append(f"the refusal does not name the flag that fills the missing camera: {refusal}")
    unknown = sorted({f for f in re.findall(r"(--[\w.]+)=", refusal) if f not in flags})
    if unknown:
        problems.append(f"the refusal suggests flags `smolvla train` does not have: {unknown}")
    if "--rename_map='{}'" in refusal:
        problems.append("the refusal suggests --rename_map='{}' (an empty map: every dataset camera is already mapped)")
    return problems


def evaluate(result: Path, dataset: Path, rename: dict[str, str], tag: str, work: Path, env: dict[str, str]):
    """smolvla's eval agent, smolvla's server and LeRobot on frame 0 of `dataset` with the same noise: a record of
    timings, action differences and problems. A failing stage is recorded, not raised."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from smolvla.eval.agent import AgentFactory
    from smolvla.processors import ImagesToFloat, load_processors
    from smolvla.serve.client import PolicyClient
    from smolvla.serve.server import PolicyServer, ServeConfig

    record: dict = {"checkpoint": str(result), "seconds": {}, "max_abs_action_diff": {}, "problems": []}
    seconds, problems = record["seconds"], record["problems"]
    config = json.loads((result / "config.json").read_text())
    pre, _ = load_processors(result)
    saved = {
        "vlm_model_name": config["vlm_model_name"],
        "backbone copied into the checkpoint (vlm/)": (result / "vlm").exists(),
        "tokenizer files in the checkpoint": sorted(p.name for p in result.glob("tokenizer*")),
        "preprocessor steps": [s.registry_name for s in pre.steps],
        "preprocessor rename step": pre.steps[0].get_config().get("rename_map"),
        "cameras": [k for k, f in config["input_features"].items() if f["type"] == "VISUAL"],
    }
    record["saved_checkpoint"] = saved
    # Fine-tuning normalizes with the new dataset's statistics (LeRobot's rule), not the base checkpoint's.
    normalizer = load_file(next(result.glob("policy_preprocessor_step_*_normalizer_processor.safetensors")))
    dataset_stats = json.loads((dataset / "meta" / "stats.json").read_text())
    saved["normalizer vs dataset stats, max abs"] = max(
        float(np.abs(normalizer[f"{key}.{stat}"].numpy() - np.asarray(dataset_stats[key][stat])).max())
        for key in ("observation.state", "action")
        for stat in ("mean", "std")
    )
    if saved["normalizer vs dataset stats, max abs"] > 1e-5:
        problems.append(f"the result does not normalize with the dataset's statistics: {saved}")
    log(f"[{tag}] result {result}: {saved}")
    if saved["vlm_model_name"] != BACKBONE_ID or saved["backbone copied into the checkpoint (vlm/)"]:
        problems.append(f"the fine-tuned checkpoint does not name the backbone by hub id as LeRobot does: {saved}")
    if saved["preprocessor rename step"] != rename:
        problems.append(f"the preprocessor's rename step is {saved['preprocessor rename step']}, not {rename}")

    raw = first_frame(dataset)
    images = {k: v for k, v in raw.items() if k.startswith("observation.images.")}
    generator = torch.Generator().manual_seed(SEED)
    noise = torch.randn(1, config["chunk_size"], config["max_action_dim"], generator=generator)
    chunks = {}

    log(f"[{tag}] 5a. smolvla eval's agent (AgentFactory, as `smolvla eval --policy.path`) on frame 0")
    try:
        t0 = time.perf_counter()
        agent = AgentFactory(path=str(result))()
        seconds["eval agent: load"] = time.perf_counter() - t0
        record["params"] = sum(p.numel() for p in agent.policy.parameters())
        pixels = {camera: raw[key].numpy() for key, camera in agent.cameras.items()}
        observation = {"agent_pos": raw["observation.state"].numpy(), "task": raw["task"], "pixels": pixels}
        agent.reset(seed=SEED)  # torch.manual_seed(SEED): the chunk's noise is `noise`
        t0 = time.perf_counter()
        chunk = [agent.select_action(observation) for _ in range(agent.policy.config.n_action_steps)]
        seconds["eval agent: one chunk"] = time.perf_counter() - t0
        chunks["smolvla eval agent"] = np.stack(chunk)
        del agent
    except Exception as e:
        problems.append(f"smolvla's eval agent failed: {type(e).__name__}: {e}")

    log(f"[{tag}] 5b. smolvla's server; the robot sends its own camera names")
    try:
        t0 = time.perf_counter()
        server = PolicyServer(ServeConfig(policy_path=str(result), port=0, request_timeout_s=900))
        port = server.start()
        seconds["serve: load + start"] = time.perf_counter() - t0
        try:
            client = PolicyClient(address=f"127.0.0.1:{port}", timeout_s=900)
            record["served_features"] = sorted(f.name for f in client.info().features)
            t0 = time.perf_counter()
            state = raw["observation.state"].numpy()
            reply = client.predict(state, {k: v.numpy() for k, v in images.items()}, raw["task"], seed=SEED)
            seconds["serve: one chunk (round trip)"] = time.perf_counter() - t0
            chunks["smolvla server"] = reply.actions
            client.close()
        finally:
            server.stop()
        if record["served_features"] != sorted(["observation.state", *images]):
            problems.append(f"the server asks for {record['served_features']}, the robot has {sorted(images)}")
    except Exception as e:
        problems.append(f"smolvla's server failed: {type(e).__name__}: {e}")

    log(f"[{tag}] 6. LeRobot loads the result as is: same raw observation, same noise")
    floats = ImagesToFloat()({k: v for k, v in raw.items() if k != "task"})
    io, out, logfile = work / f"io_{tag}.st", work / f"lerobot_{tag}.st", work / f"lerobot_{tag}.log"
    save_file({**{k: v.contiguous() for k, v in floats.items()}, "noise": noise}, str(io))
    task = {"mode": "actions", "ckpt": str(result), "io": str(io), "actions": str(out), "task": raw["task"]}
    rc, seconds["LeRobot: load + one chunk (process)"] = lerobot(task, logfile, env)
    if rc != 0:
        problems.append(f"LeRobot could not load or run the result: {error_line(logfile)}")
        return record
    info = json.loads(next(line for line in reversed(logfile.read_text().splitlines()) if line.startswith("{")))
    record["lerobot"] = info
    seconds["LeRobot in-process: load"], seconds["LeRobot in-process: one chunk"] = info["load_s"], info["predict_s"]
    if info.get("as_is_error"):
        problems.append(f"LeRobot cannot load the preprocessor as is ({info['as_is_error']}); compared after "
                        f"dropping the steps it does not know: {info['dropped_steps']}")  # fmt: skip
    if "params" in record and info["params"] != record["params"]:
        problems.append(f"parameter counts differ: smolvla {record['params']}, LeRobot {info['params']}")
    theirs = load_file(out)["actions"][0].numpy()
    for name, ours in chunks.items():
        record["max_abs_action_diff"][f"{name} vs LeRobot"] = float(np.abs(ours - theirs).max())
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/lerobot-full-dropin", help="scratch directory (emptied first)")
    parser.add_argument("--ckpt", default="/tmp/lr_full", help="LeRobot full-size checkpoint (built when absent)")
    args = parser.parse_args()
    if not LEROBOT_PY.exists():
        sys.exit(f"LeRobot is not built: bash {SIDE / 'lerobot_ref_env.sh'} (see the README there)")
    work, ckpt = Path(args.work).resolve(), Path(args.ckpt).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = work / "hf" / "hub"
    os.environ.update(ENV | {"HF_HUB_CACHE": str(cache)})
    env = dict(os.environ)
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(THREADS)
    seconds: dict[str, float | None] = {}
    load_before = os.getloadavg()  # other processes on the machine make every timing slower

    log(f"1. LeRobot full-size checkpoint at {ckpt}")
    seconds["build LeRobot full-size checkpoint"] = build_checkpoint(ckpt, work, env)
    meta = json.loads((ckpt / "bench_meta.json").read_text())

    log("2. replica of lerobot/smolvla_base in the HF cache (LeRobot writes its processors)")
    t0 = time.perf_counter()
    write_replica(ckpt, work, cache, env)
    seconds["replica + LeRobot processors + cache"] = time.perf_counter() - t0

    log("3. the user's datasets: cameras top, wrist (and a copy with a third camera, side)")
    t0 = time.perf_counter()
    two = write_dataset(work / "so101_data", CAMERAS)
    three = write_dataset(work / "so101_data_3cam", CAMERAS | SIDE_CAMERA)
    seconds["write datasets"] = time.perf_counter() - t0

    # The user's command as is; then, since smolvla_base expects camera3, the documented way to do without it (if
    # `smolvla train --help` lists one) and a dataset that has a third camera.
    flags = train_flags(env)
    flag = next((f for f in flags if f.endswith("fill_missing_cameras")), None)
    variants = [("top_wrist", two, RENAME, [])]
    if flag:
        variants.append(("top_wrist_filled", two, RENAME, [f"{flag}=true"]))
    variants.append(("top_wrist_side", three, RENAME | SIDE_RENAME, []))
    runs = {}
    for tag, dataset, rename, extra in variants:
        log(f"4. [{tag}] smolvla train --policy.path={POLICY_ID} --rename_map=... {' '.join(extra)}")
        out, logfile = work / f"run_{tag}", work / f"train_{tag}.log"
        rc, train_s = train(dataset, rename, extra, out, logfile, env)
        record = {"dataset_cameras": sorted(k for k in first_frame(dataset) if k.startswith("observation.images.")),
                  "rename_map": rename, "extra_flags": extra, "train_exit": rc,
                  "seconds": {"smolvla train (process)": train_s}}  # fmt: skip
        if rc != 0:
            record["refusal"] = error_line(logfile)
            record["problems"] = refusal_problems(record["refusal"], flags)
            log(f"[{tag}] refused (exit {rc}): {record['refusal']}")
        else:
            result = (out / "checkpoints" / "last" / "pretrained_model").resolve()
            evaluated = evaluate(result, dataset, rename, tag, work, env)
            evaluated["seconds"] = record["seconds"] | evaluated["seconds"]
            record |= evaluated
        runs[tag] = record

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    report = {
        "policy": f"{POLICY_ID} replica (random weights, smolvla_base architecture), backbone {BACKBONE_ID}",
        "params": meta["params"],
        "tolerance": TOLERANCE,
        "seconds": {k: None if v is None else round(v, 2) for k, v in seconds.items()},
        "checkpoint_reused": seconds["build LeRobot full-size checkpoint"] is None,
        "runs": runs,
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "torch_threads": THREADS,
            "torch": torch.__version__,
            "lerobot": meta["versions"]["lerobot"],
            "lerobot_torch": meta["versions"]["torch"],
            "python": platform.python_version(),
            "load_average_1_5_15_min": {"start": load_before, "end": os.getloadavg()},
        },
    }
    for record in runs.values():
        record["seconds"] = {k: round(v, 2) for k, v in record["seconds"].items()}
    print_report(report)
    text = json.dumps(report, indent=2) + "\n"
    RESULTS.write_text(text)
    (work / "lerobot_full_dropin.json").write_text(text)
    diffs = {f"{tag}: {k}": v for tag, r in runs.items() for k, v in r.get("max_abs_action_diff", {}).items()}
    assert all(v <= TOLERANCE for v in diffs.values()), diffs
    assert len(runs["top_wrist_side"].get("max_abs_action_diff", {})) == 2, runs["top_wrist_side"]


def print_report(report: dict) -> None:
    print("\n| stage | seconds |\n|---|---|")
    for name, value in report["seconds"].items():
        print(f"| {name} | {'reused' if value is None else f'{value:.1f}'} |")
    for tag, record in report["runs"].items():
        flags = " ".join(record["extra_flags"]) or "-"
        print(f"\n## {tag}: dataset cameras {record['dataset_cameras']}, extra flags {flags}")
        if "refusal" in record:
            print(f"smolvla train refused (exit {record['train_exit']}): {record['refusal']}")
        print("| stage | seconds |\n|---|---|")
        for name, value in record["seconds"].items():
            print(f"| {name} | {value:.1f} |")
        if record.get("max_abs_action_diff"):
            print("| same raw observation, same noise | max abs action difference (robot units) |\n|---|---|")
            for name, value in record["max_abs_action_diff"].items():
                print(f"| {name} | {value:.2e} |")
        for problem in record.get("problems", []):
            print(f"problem: {problem}")
    machine = report["machine"]
    print(f"\nparameters: {report['params']:,}; {machine['cores']}-core {machine['cpu']}, torch {machine['torch']}, "
          f"{machine['torch_threads']} threads; load average {machine['load_average_1_5_15_min']}")  # fmt: skip


if __name__ == "__main__":
    main()
