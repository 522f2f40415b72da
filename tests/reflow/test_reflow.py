"""Reflow and distillation of SmolVLA policies: exact straight-line targets, a frozen unsaved teacher, a reproducible
pair cache, k-round and one-step CLIs, and clear errors for mismatched or missing teachers."""

import json

import pytest
import torch
from safetensors.torch import load_file

from smolvla import streams
from smolvla.errors import ConfigError
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import load_processors
from smolvla.reflow.config import DistillConfig, ReflowArgs, ReflowConfig, ReflowTrainConfig
from smolvla.reflow.hooks import ReflowHooks, hooks_for
from smolvla.reflow.measure import action_errors, chunk_latency
from smolvla.reflow.pairs import PairCache, generate_pairs
from smolvla.reflow.run import run_distill, run_reflow
from smolvla.reflow.teacher import solve
from smolvla.train.config import DatasetArgs, TrainConfig
from smolvla.train.data import load_train_data
from smolvla.train.trainer import Trainer
from smolvla.train.trainer import train as train_with
from tests.data.builders import EPISODES, make_episodes, write_v30


def train(config: TrainConfig):
    """`smolvla train`: the reflow flags select the reflow hooks."""
    return train_with(config, hooks_for(config))


def reflow_trainer(flags: list[str]) -> Trainer:
    config = ReflowTrainConfig.from_flags(flags)
    return Trainer(config, hooks_for(config))


BASE = ["--batch_size=4", "--log_freq=2", "--save_freq=100", "--val_freq=0", "--num_workers=0", "--progress=false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    episodes = EPISODES * 2
    root = tmp_path_factory.mktemp("reflow") / "ds"
    return write_v30(root, make_episodes(episodes=episodes), [t for _, t in episodes])


@pytest.fixture(scope="module")
def teacher(dataset, tmp_path_factory):
    """A briefly trained 1-RF policy (chunk 5): its pretrained_model directory."""
    out = tmp_path_factory.mktemp("teacher")
    flags = [f"--dataset.root={dataset}", f"--output_dir={out}", "--steps=4", *BASE]
    flags += ["--policy.chunk_size=5", "--policy.n_action_steps=5"]
    return train(ReflowTrainConfig.from_flags(flags)).checkpoint / "pretrained_model"


def reflow_flags(dataset, teacher, out, *extra):
    return [f"--dataset.root={dataset}", f"--output_dir={out}", "--steps=3", *BASE,
            "--policy.use_reflow=true", f"--policy.teacher_path={teacher}", "--policy.reflow_num_inference_steps=3",
            *extra]  # fmt: skip


def first_batch(dataset, teacher, n=4):
    data = load_train_data(DatasetArgs(root=(str(dataset),)), 5, seed=1000)
    raw = torch.utils.data.default_collate([data.train[i] for i in range(n)])
    pre, _ = load_processors(teacher)
    return raw, pre(raw)


def test_targets_are_the_teachers_own_ode_solution(dataset, teacher, tmp_path):
    trainer = reflow_trainer(reflow_flags(dataset, teacher, tmp_path / "s"))
    raw, batch = first_batch(dataset, teacher)
    noise = torch.randn(4, 5, trainer.policy.config.max_action_dim, generator=torch.Generator().manual_seed(3))
    time = torch.full((4,), 0.3)
    paired, x0, t = trainer.hooks.targets(raw, batch, noise, time, index=0)
    # An independent Euler solve of the teacher (loaded afresh) from the same noise and observation.
    reference = SmolVLAPolicy.from_pretrained(teacher).eval()
    x1 = reference.model.sample(reference.prepare_observation(batch), noise, 3)
    assert torch.equal(x0, noise) and torch.equal(t, time)
    torch.testing.assert_close(paired["action"], x1, rtol=0, atol=1e-6)
    assert "action_is_pad" not in paired  # the teacher's chunk is defined on every step
    student = trainer.policy.model
    out = student.losses(trainer.policy.prepare_observation(paired), *trainer.policy.prepare_actions(paired)[:1], x0, t)
    torch.testing.assert_close(out["u_t"], noise - x1, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["x_t"], 0.3 * noise + 0.7 * x1, rtol=0, atol=1e-6)


def test_teacher_is_frozen_and_not_saved(dataset, teacher, tmp_path):
    trainer = reflow_trainer(reflow_flags(dataset, teacher, tmp_path / "s"))
    before = {k: v.clone() for k, v in load_file(str(teacher / "model.safetensors")).items()}
    result = trainer.run()
    frozen = trainer.hooks._teacher
    assert frozen is not None and not frozen.training
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    assert all(torch.equal(frozen.state_dict()[k], v) for k, v in before.items())
    saved = load_file(str(result.checkpoint / "pretrained_model" / "model.safetensors"))
    assert saved.keys() == before.keys()  # the student's own weights only: no teacher copy inside
    assert any(not torch.equal(saved[k], before[k]) for k in saved), "the student (initialised as the teacher) trained"
    # The student reads the teacher's batches: its processors are the teacher's (same normalization stats).
    names = sorted(p.name for p in teacher.glob("policy_preprocessor_step_*.safetensors"))
    assert names
    for name in names:
        a, b = load_file(str(teacher / name)), load_file(str(result.checkpoint / "pretrained_model" / name))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_pair_cache_is_reproducible_and_used_as_stored(dataset, teacher, tmp_path):
    args = DatasetArgs(root=(str(dataset),))
    make = dict(seed=1000, num_steps=3, pairs_per_frame=2, batch_size=5)
    a = generate_pairs(str(teacher), args, tmp_path / "a", **make)
    b = PairCache.load(generate_pairs(str(teacher), args, tmp_path / "b", **make).save(tmp_path / "b"))
    assert a.meta["frames"] == len(load_train_data(args, 5, 1000).train)
    for name in ("keys", "noise", "actions"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # Each stored X1 is the teacher's solution from the stored X0.
    raw, batch = first_batch(dataset, teacher, n=3)
    reference = SmolVLAPolicy.from_pretrained(teacher).eval()
    noise, x1 = a.lookup(raw["dataset_index"], raw["index"], seed=1000, batch_index=7)
    (expected,) = solve(reference, batch, [noise], 3)
    torch.testing.assert_close(x1, expected, rtol=0, atol=1e-5)
    # Training from the cache is deterministic and reads the same pairs as online reflow would compute.
    flags = reflow_flags(dataset, teacher, tmp_path / "c1", f"--policy.reflow_pairs={tmp_path / 'a'}", "--seed=1000")
    first = train(ReflowTrainConfig.from_flags(flags))
    flags = reflow_flags(dataset, teacher, tmp_path / "c2", f"--policy.reflow_pairs={tmp_path / 'b'}", "--seed=1000")
    second = train(ReflowTrainConfig.from_flags(flags))
    w1 = load_file(str(first.checkpoint / "pretrained_model" / "model.safetensors"))
    w2 = load_file(str(second.checkpoint / "pretrained_model" / "model.safetensors"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # A cache made with another seed (another split and noise) is refused, naming what differs.
    with pytest.raises(ConfigError, match="seed"):
        train(ReflowTrainConfig.from_flags(reflow_flags(dataset, teacher, tmp_path / "c3",
                                                  f"--policy.reflow_pairs={tmp_path / 'a'}", "--seed=1")))  # fmt: skip


def test_reflow_rounds_and_one_step_distillation(dataset, teacher, tmp_path):
    out = tmp_path / "reflow"
    flags = [f"--dataset.root={dataset}", f"--output_dir={out}", "--steps=2", *BASE, "--rounds=2",
             f"--policy.teacher_path={teacher}", "--policy.reflow_num_inference_steps=2",
             "--pairs_per_frame=1"]  # fmt: skip
    rounds = run_reflow(ReflowConfig.from_flags(flags))
    assert [p.parts[-4] for p in rounds] == ["round_1", "round_2"]
    meta = json.loads((out / "round_2" / "pairs" / "pairs.json").read_text())
    assert meta["teacher"] == str(rounds[0].resolve())  # round 2's teacher is round 1's student
    again = run_reflow(ReflowConfig.from_flags(flags))  # a rerun reuses finished rounds
    assert again == rounds

    flags = [f"--dataset.root={dataset}", f"--output_dir={tmp_path / 'distill'}", "--steps=2", *BASE,
             f"--policy.teacher_path={rounds[-1]}", "--policy.reflow_num_inference_steps=2"]  # fmt: skip
    one_step = run_distill(DistillConfig.from_flags(flags))
    policy = SmolVLAPolicy.from_pretrained(one_step)
    assert policy.config.num_steps == 1
    saved = json.loads((one_step / "train_config.json").read_text())
    assert saved["policy"]["reflow_one_step"] is True


def test_distillation_trains_the_one_step_map_only(dataset, teacher, tmp_path):
    trainer = reflow_trainer(reflow_flags(dataset, teacher, tmp_path / "d",
                                                          "--policy.reflow_one_step=true"))  # fmt: skip
    raw, batch = first_batch(dataset, teacher)
    noise = torch.randn(4, 5, trainer.policy.config.max_action_dim)
    _, _, t = trainer.hooks.targets(raw, batch, noise, torch.rand(4), index=0)
    assert torch.equal(t, torch.ones(4))  # x_t = X0: the loss is on the single Euler step X0 − v(X0, 1)


def test_bad_teachers_are_clear_errors(dataset, teacher, tmp_path):
    def make(*extra, teacher_path=teacher):
        return reflow_trainer(reflow_flags(dataset, teacher_path, tmp_path / "x", *extra))

    with pytest.raises(ConfigError, match="teacher_path"):
        ReflowTrainConfig.from_flags([f"--dataset.root={dataset}", "--policy.use_reflow=true"])
    with pytest.raises(ConfigError, match="use_reflow"):
        ReflowTrainConfig.from_flags([f"--dataset.root={dataset}", f"--policy.teacher_path={teacher}"])
    with pytest.raises(ConfigError, match="does not exist"):
        make(teacher_path=tmp_path / "nowhere")
    # A student with another chunk size than the teacher cannot regress its chunks.
    other = tmp_path / "other"
    train(ReflowTrainConfig.from_flags([f"--dataset.root={dataset}", f"--output_dir={other}", "--steps=1", *BASE,
                                  "--policy.chunk_size=4", "--policy.n_action_steps=4"]))  # fmt: skip
    with pytest.raises(ConfigError, match="chunk_size=5, the student chunk_size=4"):
        make("--policy.path=" + str(other / "checkpoints" / "last"))
    with pytest.raises(ConfigError, match=r"drop --policy\.path"):
        ReflowConfig.from_flags([f"--dataset.root={dataset}", f"--policy.teacher_path={teacher}",
                                 f"--policy.path={teacher}"])  # fmt: skip
    with pytest.raises(ConfigError, match="not a reflow pair cache"):
        make(f"--policy.reflow_pairs={tmp_path}")


def test_reflow_targets_check_the_action_width(dataset, teacher):
    student = SmolVLAPolicy.from_pretrained(teacher)
    student.config.output_features["action"] = type(student.config.output_features["action"])("ACTION", (2,))
    config = ReflowTrainConfig(dataset=DatasetArgs(root=(str(dataset),)))
    hooks = ReflowHooks(ReflowArgs(use_reflow=True, teacher_path=str(teacher)))
    with pytest.raises(ConfigError, match="action_dim=3, the student action_dim=2"):
        hooks.attach(student, config)


def test_step_count_measurements(dataset, teacher):
    pre, _ = load_processors(teacher)
    data = load_train_data(DatasetArgs(root=(str(dataset),)), 5, seed=1000).train
    policies = {"teacher": SmolVLAPolicy.from_pretrained(teacher).eval()}
    policies["noisy"] = SmolVLAPolicy.from_pretrained(teacher).eval()
    with torch.no_grad():
        policies["noisy"].model.action_out_proj.bias.add_(0.5)
    out = action_errors(policies, pre, data, [1, 2], reference="teacher", reference_steps=4, batch_size=6,
                        max_batches=1, seed=5)  # fmt: skip
    # Recompute the noisy policy's 2-step error against the 4-step teacher by hand on the same frames and noise.
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(5))[:6].tolist()
    batch = pre(torch.utils.data.default_collate([data[i] for i in indices]))
    noise = torch.randn(6, 5, 32, generator=torch.Generator().manual_seed(streams.batch_seed(5, 0, streams.MEASURE)))
    reference = policies["teacher"].predict_chunk(batch, noise=noise, num_steps=4)
    noisy = policies["noisy"].predict_chunk(batch, noise=noise, num_steps=2)
    expected = (noisy - reference).pow(2).mean().item()
    assert out["noisy"]["mse_reference"][2] == pytest.approx(expected, rel=1e-5)
    assert out["noisy"]["mse_reference"][2] > out["teacher"]["mse_reference"][2] > 0
    assert all(out[name]["straightness"] > 0 for name in policies)
    latency = chunk_latency(policies["teacher"], pre(torch.utils.data.default_collate([data[0]])), [1, 4], repeats=3)
    assert set(latency) == {1, 4} and all(ms > 0 for ms in latency.values())
