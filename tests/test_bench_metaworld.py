"""The benchmark-scale Meta-World driver on a two-task toy: interrupted between stages and inside the evaluation, it
resumes where it stopped and redoes nothing; the report has the task and difficulty rows and a failure video."""

import copy
import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo is first imported

from benchmarks import bench_language_swap, bench_metaworld, pilot_aux_goal, pilot_backbone, pilot_oracle, report
from smolvla.bench import make_batch
from smolvla.errors import ConfigError
from smolvla.keys import STATE_KEY
from smolvla.model.backbone import BACKBONE_PRESETS, TINY_BACKBONE
from smolvla.policy import SmolVLAPolicy
from smolvla.sim import collect as collect_module
from smolvla.sim.collect import COLLECT_META
from smolvla.sim.metaworld_env import MetaWorldConfig, MetaWorldEnv
from smolvla.sim.tasks import resolve_tasks
from smolvla.train.config import TrainConfig
from smolvla.train.optim import make_optimizer

RECIPE = """
name: toy
tasks: drawer-close,button-press
collect: {episodes_per_task: 2, image_size: 32, cameras: [corner2], camera_pose: lerobot, num_workers: 1}
train:
  steps: 2
  batch_size: 4
  num_workers: 0
  progress: false
  val_freq: 0
  policy: {chunk_size: 5, n_action_steps: 5}
eval: {episodes: 1, num_workers: 1, max_steps: 15}
"""


def test_an_interrupted_benchmark_resumes_and_redoes_nothing(tmp_path, monkeypatch):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    recipe = bench_metaworld.Recipe.load(tmp_path / "recipe.yaml")
    recipe.output_dir = str(tmp_path / "out")
    assert recipe.train_flags()[-2:] == ["--policy.chunk_size=5", "--policy.n_action_steps=5"]
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    stages = tmp_path / "out" / "stages.json"

    bench_metaworld.run(recipe, stop_after="collect")
    after_collect = json.loads(stages.read_text())
    collected = json.loads((tmp_path / "out" / "data" / "drawer-close" / "meta" / COLLECT_META).read_text())
    assert collected["config"]["env"]["camera_pose"] == "lerobot"
    assert set(after_collect) == {"collect"} and set(after_collect["collect"]["tasks"]) == {
        "drawer-close",
        "button-press",
    }

    bench_metaworld.run(recipe, stop_after="train")
    after_train = json.loads(stages.read_text())
    assert after_train["collect"] == after_collect["collect"]  # nothing collected again
    final = tmp_path / "out" / "train" / "checkpoints" / "000002" / "pretrained_model"
    trained_at = (final / "model.safetensors").stat().st_mtime_ns

    import smolvla.eval.evaluate as evaluate_module

    evaluated, real = [], evaluate_module.evaluate

    def killed_on_the_second_task(config, progress=True):
        if evaluated:
            raise KeyboardInterrupt  # the run dies while evaluating button-press
        assert config.env.camera_pose == "lerobot"  # evaluated from where the data was collected
        evaluated.append(config.env.task)
        return real(config, progress)

    monkeypatch.setattr(evaluate_module, "evaluate", killed_on_the_second_task)
    with pytest.raises(KeyboardInterrupt):
        bench_metaworld.run(recipe)
    assert evaluated == ["drawer-close"]

    def counting(config, progress=True):
        evaluated.append(config.env.task)
        return real(config, progress)

    monkeypatch.setattr(evaluate_module, "evaluate", counting)
    result = bench_metaworld.run(recipe)
    assert evaluated == ["drawer-close", "button-press"]  # only the task the interruption left
    done = json.loads(stages.read_text())
    assert done["collect"] == after_collect["collect"] and done["train"] == after_train["train"]
    assert (final / "model.safetensors").stat().st_mtime_ns == trained_at  # not trained again
    assert set(done["eval"]["tasks"]) == {"drawer-close", "button-press"}

    rows = {r["task"]: r for r in result["rows"]}
    assert {"drawer-close", "button-press", "**easy** (2 tasks)", "**overall** (2 tasks)"} <= set(rows)
    assert result["groups"]["overall"] == pytest.approx(
        (rows["drawer-close"]["success"] + rows["button-press"]["success"]) / 2
    )
    for task in ("drawer-close", "button-press"):  # 15 steps of an untrained policy: a failure, recorded
        assert rows[task]["success"] == 0 and rows[task]["video"].endswith(f"{task}_0_failure.mp4")
    saved = json.loads((tmp_path / "results" / "metaworld_toy.json").read_text())
    assert saved["machine"]["recipe"]["tasks"] == "drawer-close,button-press" and saved["rows"] == result["rows"]

    bench_metaworld.run(recipe)  # finished: nothing at all is redone
    assert evaluated == ["drawer-close", "button-press"] and json.loads(stages.read_text()) == done


def test_a_run_stopped_by_kill_still_logs_the_interrupted_stage(tmp_path, monkeypatch):
    """SIGTERM (`kill`) unwinds like Ctrl-C once the driver's handler is installed: the stage's wall time reaches
    stages.json. Python's default handler would end the process inside the stage and log nothing."""
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    recipe = bench_metaworld.Recipe.load(tmp_path / "recipe.yaml")
    import smolvla.train.trainer as trainer_module

    def killed(config):
        assert callable(signal.getsignal(signal.SIGTERM)), "SIGTERM still has Python's default: it would end pytest"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal arrives before this ends: a handler that does not raise fails the test

    monkeypatch.setattr(trainer_module, "train", killed)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        bench_metaworld.exit_on_sigterm()
        started = time.perf_counter()
        with pytest.raises(SystemExit) as exited:
            bench_metaworld.train_stage(recipe, ["unused"], tmp_path, bench_metaworld.StageLog(tmp_path))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exited.value.code == 128 + signal.SIGTERM and time.perf_counter() - started < 30
    assert json.loads((tmp_path / "stages.json").read_text())["train"]["seconds"] >= 0


CONFIGS = Path(bench_metaworld.__file__).parent / "configs"
SHIPPED = sorted(CONFIGS.glob("metaworld*.yaml")) + sorted(CONFIGS.glob("metaworld_pilots/*.yaml"))


def test_every_shipped_recipe_is_runnable_as_written():
    """The recipe files in benchmarks/configs parse as recipes and as `smolvla train` flags, name known tasks, train at
    the image size they collect at, and never share a name or output directory (one run's results would overwrite
    another's)."""
    assert len(SHIPPED) >= 3
    recipes = [bench_metaworld.Recipe.load(path) for path in SHIPPED]
    for path, recipe in zip(SHIPPED, recipes, strict=True):
        assert resolve_tasks(recipe.tasks), path
        roots = ",".join(resolve_tasks(recipe.tasks))  # one dataset per task, as the driver trains on
        config = TrainConfig.from_flags([*recipe.train_flags(), f"--dataset.root={roots}", "--output_dir=unused"])
        assert config.policy.image_size in (None, recipe.collect.image_size), path
    for field in ("name", "output_dir"):
        values = [getattr(r, field) for r in recipes]
        assert len(set(values)) == len(values), f"two recipes share a {field}: {values}"


def test_task_weights_become_sampling_weights_in_task_order(tmp_path):
    """`task_weights` turns into `--dataset.weights` in the order the driver passes the task datasets (unnamed tasks
    1); a task outside the recipe, a negative or non-numeric weight, or weights given twice is one clear error."""
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE + "task_weights: {button-press: 3}\n")
    recipe = bench_metaworld.Recipe.load(path)
    assert resolve_tasks(recipe.tasks) == ["drawer-close", "button-press"]
    assert recipe.train_flags()[-1] == "--dataset.weights=1,3"
    config = TrainConfig.from_flags([*recipe.train_flags(), "--dataset.root=a,b", "--output_dir=unused"])
    assert config.dataset.weights == (1.0, 3.0)
    twice = RECIPE.replace("  val_freq: 0\n", "  val_freq: 0\n  dataset: {weights: [1, 3]}\n")
    bad = [RECIPE + "task_weights: {reach: 3}", RECIPE + "task_weights: {button-press: -1}",
           RECIPE + "task_weights: {button-press: many}", RECIPE + "task_weights: [3, 1]",
           twice + "task_weights: {button-press: 3}"]  # fmt: skip
    for text in bad:
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match="task_weights must map tasks of the recipe"):
            bench_metaworld.Recipe.load(path)


def test_backbone_pilots_reshape_existing_fields_into_a_model_that_runs(monkeypatch):
    """Each backbone pilot's command (in its recipe's header comment) changes only fields the tiny backbone has, and the
    reshaped backbone builds a policy whose loss runs; a misspelt or malformed `--set` is one clear error."""
    pilots = [path for path in SHIPPED if "pilot_backbone.py" in path.read_text()]
    assert len(pilots) >= 4
    for path in pilots:
        config, ids = copy.deepcopy(BACKBONE_PRESETS[TINY_BACKBONE])
        assignments = re.findall(r"--set (\S+)", path.read_text())
        applied = pilot_backbone.reshape(config, assignments)
        assert len(applied) == len(assignments) >= 1, path
        monkeypatch.setitem(BACKBONE_PRESETS, TINY_BACKBONE, (config, ids))
        side = bench_metaworld.Recipe.load(path).collect.image_size
        camera = {"type": "VISUAL", "shape": [3, side, side]}
        features = {STATE_KEY: {"type": "STATE", "shape": [4]}, "observation.images.corner2": camera}
        policy = SmolVLAPolicy.from_preset("tiny", input_features=features, resize_imgs_with_padding=[side, side])
        assert torch.isfinite(policy(make_batch(policy, 2, 8, "cpu"))), path
    for bad in ("vision_config.patch_sise=16", "scale_factor", "nothing.here=1", "scale_factor=two"):
        with pytest.raises(ConfigError, match="--set expects PATH=VALUE"):
            pilot_backbone.reshape(copy.deepcopy(BACKBONE_PRESETS[TINY_BACKBONE][0]), [bad])


@pytest.mark.parametrize("with_object", [False, True])
def test_the_oracle_pilot_tells_the_policy_the_goal_and_records_it(monkeypatch, with_object):
    """pilot_oracle appends the goal's xyz (then the puck's, with `--object`) to `agent_pos` (and so to the recorded
    `observation.state`), leaving the rest of the observation alone; its recipes collect and evaluate in-process,
    where the change holds."""
    for name in ("_observation", "dataset_features"):  # restored after the test: tell_goal patches the class
        monkeypatch.setattr(MetaWorldEnv, name, getattr(MetaWorldEnv, name))
    plain = MetaWorldEnv(MetaWorldConfig(task="push", cameras=()))
    before, _ = plain.reset(seed=3)
    names = pilot_oracle.tell_goal(with_object=with_object)
    told = MetaWorldEnv(MetaWorldConfig(task="push", cameras=()))
    after, _ = told.reset(seed=3)
    told_parts = [told.sim._target_pos] + ([told.sim._get_pos_objects()] if with_object else [])
    size = 7 + 3 * with_object
    assert after["agent_pos"].shape == (size,) and after["agent_pos"].dtype == np.float32
    np.testing.assert_allclose(after["agent_pos"], np.concatenate([before["agent_pos"], *told_parts]), atol=1e-6)
    np.testing.assert_array_equal(after["environment_state"], before["environment_state"])
    state = told.dataset_features()["observation.state"]
    assert state["shape"] == [size] and state["names"] == names
    assert names[4:] == pilot_oracle.GOAL_NAMES + (pilot_oracle.OBJECT_NAMES if with_object else [])
    plain.close()
    told.close()
    recipes = [path for path in SHIPPED if "pilot_oracle.py" in path.read_text()]
    assert recipes and all(
        (r.collect.num_workers, r.eval.num_workers) == (1, 1) for r in map(bench_metaworld.Recipe.load, recipes)
    )


def test_the_aux_goal_pilot_adds_a_training_only_goal_loss_and_leaves_the_checkpoint_alone():
    """pilot_aux_goal adds, per training sample, the head's squared error on the normalized goal and object xyz to the
    flow-matching loss; evaluation-mode losses (validation) and the policy's weights are exactly as without it."""
    camera = {"type": "VISUAL", "shape": [3, 64, 64]}
    features = {STATE_KEY: {"type": "STATE", "shape": [4]}, **{f"observation.images.{c}": camera for c in "ab"}}
    policy = SmolVLAPolicy.from_preset("tiny", input_features=features, resize_imgs_with_padding=[64, 64])
    batch = make_batch(policy, 3, 8, "cpu")
    noise, time = policy.sample_noise_and_time(3, torch.Generator().manual_seed(1))
    plain = policy.train().compute_loss(batch, noise=noise, time=time, reduction="none")
    keys = set(policy.state_dict())

    hooks = pilot_aux_goal.AuxGoalHooks(["goal", "object"], weight=0.5)
    hooks.mean, hooks.std = torch.zeros(6), torch.full((6,), 2.0)
    hooks.attach(policy, None)
    state = torch.randn(3, 39)
    hooks.targets({pilot_aux_goal.ENV_STATE: state}, batch, noise, time, 0)
    told = policy.compute_loss(batch, noise=noise, time=time, reduction="none")

    with torch.no_grad():
        images = torch.cat(policy.prepare_observation(batch).images)
        tokens = policy.model.vlm_with_expert.embed_images(images).unflatten(0, (2, 3)).transpose(0, 1).flatten(1)
        target = torch.cat([state[:, 36:39], state[:, 4:7]], dim=1) / 2.0
        expected = 0.5 * (hooks.head(tokens) - target).pow(2).mean(-1)
    torch.testing.assert_close(told.detach() - plain.detach(), expected, atol=1e-5, rtol=1e-4)
    told.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hooks.head.parameters())
    hooks.targets({pilot_aux_goal.ENV_STATE: state}, batch, noise, time, 1)
    evaluated = policy.eval().compute_loss(batch, noise=noise, time=time, reduction="none")
    torch.testing.assert_close(evaluated, plain.detach(), atol=1e-6, rtol=1e-5)
    assert set(policy.state_dict()) == keys
    optimizer = hooks.extend_optimizer(make_optimizer)(policy)
    assert [len(g["params"]) for g in optimizer.param_groups][1:] == [len(list(hooks.head.parameters()))]
    recipes = [path for path in SHIPPED if "pilot_aux_goal.py" in path.read_text()]
    assert len(recipes) >= 3
    assert not any(bench_metaworld.Recipe.load(r).train["policy"].get("compile_model") for r in recipes)


def test_the_aux_goal_pilot_with_swap_checks_pairs_first_and_reports_the_swap_matrix(tmp_path, monkeypatch):
    """`--swap`: tasks that do not come in pairs stop the pilot before anything runs; paired, it trains with its head
    and hands the policy to bench_language_swap (collect and train reused), whose JSON records the pilot's notes."""
    from smolvla.train import trainer

    monkeypatch.setattr(trainer, "make_optimizer", trainer.make_optimizer)  # main wraps both: restored afterwards
    monkeypatch.setattr(trainer, "train", trainer.train)
    calls = []
    monkeypatch.setattr(bench_metaworld, "run", lambda recipe, **kwargs: calls.append(kwargs) or {"policy": "p"})
    monkeypatch.setattr(pilot_aux_goal, "goal_error", lambda *args: {"handle-press": {}})
    monkeypatch.setattr(bench_language_swap, "run", lambda recipe, notes: calls.append({"swap": recipe.tasks, **notes}))
    config = tmp_path / "recipe.yaml"
    config.write_text(RECIPE.replace("drawer-close,button-press", "handle-press,handle-pull,door-lock"))
    monkeypatch.setattr("sys.argv", ["pilot", "--config", str(config), "--swap"])
    with pytest.raises(SystemExit, match="tasks must come in pairs that share a scene, got 3"):
        pilot_aux_goal.main()
    assert calls == []
    config.write_text(RECIPE.replace("drawer-close,button-press", "handle-press,handle-pull"))
    pilot_aux_goal.main()
    assert calls[0] == {"stop_after": "train"}
    assert calls[1]["swap"] == "handle-press,handle-pull" and calls[1]["aux_targets"] == ["goal", "object"]
    assert len(calls) == 2  # no plain MT evaluation beside the swap matrix


def test_goal_scenes_teach_the_head_on_fresh_starts_as_the_cameras_saw_them(tmp_path):
    """`--goal_scenes`: fresh starts rendered as collected (each its own goal), and at every training micro-batch a
    batch of them, drawn reproducibly, adds the head's error on their goals to every sample's loss."""
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("drawer-close,button-press", "reach"))
    frames, states = pilot_aux_goal.goal_scenes(bench_metaworld.Recipe.load(tmp_path / "recipe.yaml"), per_task=3)
    assert frames["corner2"].shape == (3, 3, 32, 32) and frames["corner2"].dtype == torch.uint8
    goals = states[:, pilot_oracle.GOAL]
    assert states.shape == (3, 39) and len({tuple(g.tolist()) for g in goals}) == 3  # a new goal at every start

    camera = {"type": "VISUAL", "shape": [3, 32, 32]}
    features = {STATE_KEY: {"type": "STATE", "shape": [4]}, "observation.images.corner2": camera}
    policy = SmolVLAPolicy.from_preset("tiny", input_features=features, resize_imgs_with_padding=[64, 64])
    batch = make_batch(policy, 2, 8, "cpu")
    noise, time = policy.sample_noise_and_time(2, torch.Generator().manual_seed(1))
    plain = policy.train().compute_loss(batch, noise=noise, time=time, reduction="none")
    hooks = pilot_aux_goal.AuxGoalHooks(["goal"], weight=0.5, render_scenes=lambda: (frames, states))
    hooks.mean, hooks.std = torch.zeros(3), torch.full((3,), 0.1)
    assert hooks.scenes is None  # rendered when training starts, so a run that only re-reports renders none
    hooks.attach(policy, None)
    demo_state = torch.randn(2, 39)
    hooks.targets({pilot_aux_goal.ENV_STATE: demo_state}, batch, noise, time, 0)
    told = policy.compute_loss(batch, noise=noise, time=time, reduction="none")

    with torch.no_grad():
        embed = policy.model.vlm_with_expert.embed_images
        demo = hooks.head(embed(torch.cat(policy.prepare_observation(batch).images)).flatten(1))
        demo_error = (demo - demo_state[:, 36:39] / 0.1).pow(2).mean(-1)
        pick = torch.randint(3, (2,), generator=torch.Generator().manual_seed(pilot_aux_goal.SCENE_SEED))
        pixels = torch.nn.functional.interpolate(frames["corner2"][pick].float() / 255, size=(64, 64), mode="bilinear")
        scene_error = (hooks.head(embed(pixels * 2 - 1).flatten(1)) - goals[pick] / 0.1).pow(2).mean()
    torch.testing.assert_close(told.detach() - plain.detach(), 0.5 * (demo_error + scene_error), atol=1e-4, rtol=1e-4)


def test_varied_starts_and_steps_after_success_reach_only_the_named_tasks_collection(tmp_path, monkeypatch):
    """`collect.vary_joint_start`, `collect.steps_after_success` and `collect.joint_start` set the env for the tasks
    they name, at collection only (evaluation keeps Meta-World's starts and ends at success); naming a task outside
    the recipe (or a range for a task whose starts are not varied), or a negative count, is one clear error."""
    path = tmp_path / "recipe.yaml"
    text = RECIPE.replace("drawer-close,button-press", "handle-press,handle-pull")
    settings = "vary_joint_start: [handle-pull], steps_after_success: {handle-pull: 80}, "
    settings += "joint_start: {handle-pull: [-0.1, -0.05]}, hand_start_spread: {handle-pull: [0.1, 0.05, 0.08]}"
    path.write_text(text.replace("num_workers: 1}", f"num_workers: 1, {settings}}}", 1))
    recipe = bench_metaworld.Recipe.load(path)
    seen = {}
    monkeypatch.setattr(collect_module, "collect", lambda config: seen.update({config.env.task: config.env}))
    log = bench_metaworld.StageLog(tmp_path)
    bench_metaworld.collect_stage(recipe, resolve_tasks(recipe.tasks), tmp_path / "out", log)
    settings_of = {
        task: (env.vary_joint_start, env.steps_after_success, env.joint_start, env.hand_start_spread)
        for task, env in seen.items()
    }
    assert settings_of == {
        "handle-press": (False, 0, None, (0.0, 0.0, 0.0)),
        "handle-pull": (True, 80, (-0.1, -0.05), (0.1, 0.05, 0.08)),
    }
    evaluated = bench_metaworld.eval_config(recipe, tmp_path, "handle-pull", tmp_path).env
    assert not evaluated.vary_joint_start and evaluated.steps_after_success == 0 and evaluated.joint_start is None
    assert evaluated.hand_start_spread == (0.0, 0.0, 0.0)
    for bad, message in (
        ("vary_joint_start: [reach]", r"collect\.vary_joint_start must name tasks of the recipe"),
        ("steps_after_success: {reach: 5}", r"collect\.steps_after_success must map tasks of the recipe"),
        ("steps_after_success: {handle-pull: -5}", r"collect\.steps_after_success must map .* to steps >= 0"),
        ("joint_start: {handle-press: [-0.1, -0.05]}", r"collect\.joint_start must name tasks of collect\.vary"),
        ("hand_start_spread: {reach: [0.1, 0.1, 0.1]}", r"collect\.hand_start_spread must name tasks of the recipe"),
        ("hand_start_spread: {handle-pull: [0.1, 0.1]}", r"collect\.hand_start_spread.*handle-pull.*3"),
    ):
        path.write_text(text.replace("num_workers: 1}", f"num_workers: 1, {bad}}}", 1))
        with pytest.raises(ConfigError, match=message):
            bench_metaworld.Recipe.load(path)
