"""A LeRobot user's first command, offline: `--policy.path=<hub id>` from the Hugging Face cache, a dataset whose
cameras are `top`/`wrist`, `--rename_map` onto the checkpoint's `camera1`/`camera2`; the result served to a robot
that keeps its own names. The replica is laid out as lerobot-train writes it: backbone and tokenizer named by hub
id (neither copied into the checkpoint), both processor pipelines."""

import json
import shutil

import numpy as np

from smolvla.cli import main
from smolvla.data import DatasetWriter
from smolvla.data.stats import vector_stats
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import TaskTokenizer, load_processors, make_processors
from smolvla.serve.client import PolicyClient
from smolvla.serve.server import PolicyServer, ServeConfig
from tests.conftest import PARITY_DIR
from tests.data.builders import smooth_frames
from tests.hub_cache import cache_repo

BACKBONE_ID = "HuggingFaceTB/tiny-vlm"
POLICY_ID = "lerobot/smolvla_tiny"
RENAME = {
    "observation.images.top": "observation.images.camera1",
    "observation.images.wrist": "observation.images.camera2",
}
CAMERAS = {"observation.images.top": (48, 64), "observation.images.wrist": (32, 32)}
CAMERA3 = "observation.images.camera3"  # the checkpoint's third camera, which this robot does not have


def write_dataset(root, cameras=CAMERAS, state_dim: int = 7, action_dim: int = 5, task: str = "pick up the cube"):
    """A user's LeRobot dataset: by default a 7-D robot with 5-D actions and cameras named `top` / `wrist`."""
    features = {"observation.state": {"dtype": "float32", "shape": [state_dim]},
                "action": {"dtype": "float32", "shape": [action_dim]},
                **{k: {"dtype": "video", "shape": [h, w, 3]} for k, (h, w) in cameras.items()}}  # fmt: skip
    rng = np.random.default_rng(0)
    with DatasetWriter(root, fps=10, features=features) as writer:
        for e in range(4):
            n = 12
            episode = {"observation.state": rng.normal(size=(n, state_dim)).astype(np.float32),
                       "action": rng.normal(size=(n, action_dim)).astype(np.float32)}  # fmt: skip
            episode |= {k: smooth_frames(n, h, w, seed=e + i) for i, (k, (h, w)) in enumerate(cameras.items())}
            writer.add_episode(episode, task)
    return root


def lerobot_replica(tmp_path, cache):
    """The parity fixture's LeRobot weights as `lerobot/smolvla_tiny`, cameras camera1/camera2."""
    cache_repo(cache, BACKBONE_ID, PARITY_DIR / "vlm")
    replica = tmp_path / "replica"
    replica.mkdir()
    shutil.copyfile(PARITY_DIR / "model.safetensors", replica / "model.safetensors")
    config = json.loads((PARITY_DIR / "config.json").read_text())
    config["vlm_model_name"] = BACKBONE_ID
    config["input_features"] = {RENAME.get(k, k): v for k, v in config["input_features"].items()}
    config["input_features"][CAMERA3] = config["input_features"]["observation.images.camera1"]  # as smolvla_base
    (replica / "config.json").write_text(json.dumps(config))
    policy = SmolVLAPolicy.from_pretrained(replica)
    rng = np.random.default_rng(1)
    stats = {
        "observation.state": vector_stats(rng.normal(size=(50, 7))),
        "action": vector_stats(rng.normal(size=(50, 5))),
    }
    pre, post = make_processors(policy.config, stats, TaskTokenizer.from_directory(PARITY_DIR / "vlm"))
    pre.save(replica)
    post.save(replica)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # lerobot-train names the tokenizer, copies nothing
        (replica / name).unlink(missing_ok=True)
    spec = json.loads((replica / "policy_preprocessor.json").read_text())
    assert BACKBONE_ID in [s["config"].get("tokenizer_name") for s in spec["steps"]]
    cache_repo(cache, POLICY_ID, replica)


def test_train_from_a_hub_policy_with_rename_map_then_serve(hf_cache, tmp_path):
    lerobot_replica(tmp_path, hf_cache)
    dataset = write_dataset(tmp_path / "so101_data")
    out = tmp_path / "run"
    flags = [f"--policy.path={POLICY_ID}", f"--dataset.root={dataset}", f"--rename_map={json.dumps(RENAME)}",
             "--dataset.fill_missing_cameras=true",
             "--steps=2", "--batch_size=2", "--num_workers=0", "--progress=false", "--val_freq=0"]  # fmt: skip
    assert main(["train", *flags, f"--output_dir={out}"]) == 0
    result = out / "checkpoints" / "last" / "pretrained_model"
    config = json.loads((result / "config.json").read_text())
    assert config["vlm_model_name"] == BACKBONE_ID  # LeRobot's convention kept: the backbone by its hub id
    assert not (result / "vlm").exists()
    policy = SmolVLAPolicy.from_pretrained(result)
    assert set(policy.config.image_features) == {*RENAME.values(), CAMERA3}
    pre, _ = load_processors(result)
    assert pre.steps[0].rename_map == RENAME  # the robot's own names are renamed first
    server = PolicyServer(ServeConfig(policy_path=str(result), port=0))
    port = server.start()
    try:
        client = PolicyClient(address=f"127.0.0.1:{port}")
        assert {f.name for f in client.info().features} == {"observation.state", *RENAME}
        rng = np.random.default_rng(0)
        images = {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in CAMERAS.items()}
        reply = client.predict(rng.normal(size=7).astype(np.float32), images, "pick up the cube", seed=1)
        assert reply.actions.shape == (10, 5) and np.isfinite(reply.actions).all()
    finally:
        server.stop()
