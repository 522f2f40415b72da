"""ONNX export and runtime: the export matches PyTorch, is verified before it is kept, is reused, quantizes only the
weight matmuls to int8, and runs behind the same interface in the server and the evaluator."""

import json
import os
import shutil
import sys

import grpc
import numpy as np
import onnx
import pytest
import torch

from smolvla.cli import main
from smolvla.errors import ConfigError
from smolvla.eval.agent import SmolVLAAgent
from smolvla.model.checkpoint import weights_sha256
from smolvla.policy import SmolVLAPolicy
from smolvla.runtime import load_policy
from smolvla.runtime.export import ExportConfig, ExportSource, ensure_export, export_policy, sample_batch
from smolvla.runtime.onnx_policy import MANIFEST, OnnxPolicy
from smolvla.runtime.quantize import weight_matmuls
from smolvla.serve.client import PolicyClient
from smolvla.serve.server import PolicyServer, ServeConfig
from smolvla.train.config import TrainConfig
from smolvla.train.trainer import train
from tests.data.builders import CAMERAS, EPISODES, make_episodes, write_v30


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    dataset = write_v30(root / "ds", make_episodes(), [t for _, t in EPISODES])
    flags = [f"--dataset.root={dataset}", f"--output_dir={root / 'run'}", "--steps=2", "--batch_size=4",
             "--num_workers=0", "--progress=false", "--val_freq=0", "--policy.chunk_size=5",
             "--policy.n_action_steps=3", "--policy.num_steps=4"]  # fmt: skip
    return train(TrainConfig.from_flags(flags)).checkpoint / "pretrained_model"


@pytest.fixture(scope="module")
def exported(checkpoint):
    return ensure_export(checkpoint)


def test_the_export_computes_what_pytorch_computes(checkpoint, exported):
    manifest = json.loads((exported / MANIFEST).read_text())
    assert manifest["weights_sha256"] == weights_sha256(checkpoint) and manifest["quantize"] == "none"
    assert manifest["verify"]["max_abs_chunk_diff"] <= 1e-4
    policy, runtime = SmolVLAPolicy.from_pretrained(checkpoint).eval(), OnnxPolicy(exported)
    for batch_size, tokens in ((1, 3), (4, 9)):  # neither is the traced batch size or language length
        batch = sample_batch(policy, batch_size, tokens, seed=batch_size)
        noise = torch.randn(batch_size, 5, policy.config.max_action_dim)
        for steps in (1, 4):
            expected = policy.predict_chunk(batch, noise=noise, num_steps=steps)
            torch.testing.assert_close(runtime.predict_chunk(batch, noise=noise, num_steps=steps), expected,
                                       atol=1e-4, rtol=0)  # fmt: skip
    batch = sample_batch(policy, 1, 4, seed=9)
    actions = []
    for engine in (policy, runtime):  # the same action queue: a new chunk every n_action_steps calls
        engine.reset()
        torch.manual_seed(0)
        actions.append(torch.stack([engine.select_action(batch) for _ in range(4)]))
    torch.testing.assert_close(actions[1], actions[0], atol=1e-4, rtol=0)


def test_an_export_is_reused_and_a_stale_one_refused(checkpoint, exported, tmp_path):
    stamp = os.stat(exported / MANIFEST).st_mtime_ns
    assert ensure_export(checkpoint) == exported and os.stat(exported / MANIFEST).st_mtime_ns == stamp
    copy = tmp_path / "copy"
    policy = SmolVLAPolicy.from_pretrained(checkpoint)
    with torch.no_grad():
        policy.model.action_out_proj.bias.add_(1.0)
    policy.save_pretrained(copy)
    shutil.copytree(exported, copy / "onnx")  # as if the checkpoint was overwritten after its export
    with pytest.raises(ConfigError, match=r"does not match .*export again with `smolvla export --policy.path="):
        load_policy(copy, "onnx")
    fresh = export_policy(ExportConfig(policy=ExportSource(str(copy))))  # replaces the stale one
    assert fresh == copy / "onnx" and ensure_export(copy) == fresh
    manifest = json.loads((fresh / MANIFEST).read_text())
    assert manifest["weights_sha256"] == weights_sha256(copy)
    (fresh / MANIFEST).write_text(json.dumps(manifest | {"format": 1}))  # written by an older smolvla
    with pytest.raises(ConfigError, match=r"is in format 1, this smolvla writes and runs format"):
        load_policy(copy, "onnx")


def test_other_architecture_branches_export_exactly(tmp_path):
    """Self-attention at every expert layer (no cross-attention) and three cameras."""
    cameras = {f"observation.images.cam{i}": {"type": "VISUAL", "shape": [3, 32, 32]} for i in range(3)}
    features = {"observation.state": {"type": "STATE", "shape": [5]}, **cameras}
    policy = SmolVLAPolicy.from_preset(
        "tiny", input_features=features, self_attn_every_n_layers=1, chunk_size=4, n_action_steps=4
    )
    policy.save_pretrained(tmp_path / "ckpt")
    runtime = OnnxPolicy(ensure_export(tmp_path / "ckpt"))
    batch = sample_batch(policy, 2, 6, seed=3)
    noise = torch.randn(2, 4, policy.config.max_action_dim)
    expected = policy.eval().predict_chunk(batch, noise=noise)
    torch.testing.assert_close(runtime.predict_chunk(batch, noise=noise), expected, atol=1e-4, rtol=0)


def test_an_export_that_disagrees_with_pytorch_is_refused_and_nothing_is_written(checkpoint, tmp_path):
    target = tmp_path / "strict"
    config = ExportConfig(policy=ExportSource(str(checkpoint)), output_dir=str(target), tolerance=1e-12)
    with pytest.raises(ConfigError, match=r"differs from PyTorch by .* \(allowed 1e-12\); nothing was written"):
        export_policy(config)
    assert list(tmp_path.iterdir()) == []  # no half-written directory, no temp left


def test_int8_quantizes_only_the_weight_matmuls(checkpoint):
    directory = ensure_export(checkpoint, "int8")
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["quantize"] == "int8" and 0 < manifest["verify"]["max_abs_chunk_diff"] < 0.5
    model = onnx.load(str(directory / "velocity.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    weighted, _ = weight_matmuls(model)
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert not weighted and "Attention" in ops  # every constant-weight matmul is int8; attention stays float
    policy = load_policy(checkpoint, "onnx_int8")
    assert policy.predict_chunk(sample_batch(policy, 2, 4, seed=1)).shape == (2, 5, 3)


def test_served_and_evaluated_on_onnx(checkpoint, exported):
    rng = np.random.default_rng(0)
    images = {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in CAMERAS.items()}
    state = rng.normal(size=4).astype(np.float32)
    replies = {}
    for runtime in ("torch", "onnx"):
        server = PolicyServer(ServeConfig(policy_path=str(checkpoint), port=0, runtime=runtime))
        port = server.start()
        try:
            assert f"runtime {runtime}" in server.describe()
            client = PolicyClient(address=f"127.0.0.1:{port}")
            replies[runtime] = client.predict(state, images, "open the drawer", seed=3).actions
            if runtime == "onnx":  # guided real-time chunking needs autograd: refused, clearly
                with pytest.raises(grpc.RpcError) as e:
                    client.predict(state, images, "open the drawer", queued_actions=replies["onnx"][2:], frozen_steps=1)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--runtime=torch" in e.value.details()
        finally:
            server.stop()
    assert replies["onnx"].shape == (5, 3)
    np.testing.assert_allclose(replies["onnx"], replies["torch"], atol=1e-4, rtol=0)  # same seed, same chunk
    agent = SmolVLAAgent.from_pretrained(checkpoint, runtime="onnx")
    assert isinstance(agent.policy, OnnxPolicy)
    observation = {"agent_pos": np.zeros(4, np.float32), "task": "open the drawer",
                   "pixels": {c: np.zeros((32, 32, 3), np.uint8) for c in agent.cameras.values()}}  # fmt: skip
    agent.reset(seed=0)
    assert agent.select_action(observation).shape == (3,)


def test_export_command_and_its_errors(checkpoint, tmp_path, capsys):
    assert main(["export"]) == 2
    assert "set --policy.path=<a checkpoint> to export" in capsys.readouterr().err
    assert main(["export", f"--policy.path={checkpoint}", "--quantize=int4"]) == 2
    assert "--quantize must be one of" in capsys.readouterr().err
    assert main(["serve", f"--policy_path={checkpoint}", "--runtime=tensorflow"]) == 2
    assert "--runtime must be one of" in capsys.readouterr().err


def test_missing_onnxruntime_is_one_clear_error(checkpoint, exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs onnxruntime, which is not installed: pip install 'smolvla\[onnx\]'"):
        OnnxPolicy(exported)
    with pytest.raises(ConfigError, match=r"needs onnxruntime, which is not installed"):
        export_policy(ExportConfig(policy=ExportSource(str(checkpoint)), output_dir=str(exported.parent / "x")))
