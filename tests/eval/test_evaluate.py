import dataclasses
import json

import numpy as np
import pytest
import torch

from smolvla.errors import ConfigError
from smolvla.eval.agent import AgentFactory, SmolVLAAgent
from smolvla.eval.evaluate import EvalConfig, evaluate, run_evaluation
from smolvla.sim.metaworld_env import MetaWorldConfig, SimError

BLIND = MetaWorldConfig(task="unused", cameras=(), max_steps=500)
TASKS = ["reach", "push", "drawer-open"]


def test_experts_solve_three_tasks():
    summary, _ = run_evaluation(AgentFactory("expert"), BLIND, TASKS, n_episodes=10)
    for task in TASKS:
        assert summary["per_task"][task]["success_rate"] >= 0.9, (task, summary["per_task"][task])
        assert summary["per_task"][task]["episodes"] == 10
    assert summary["per_difficulty"].keys() == {"easy", "hard"}  # push is "hard" in the SmolVLA split


def test_random_policy_almost_never_succeeds():
    blind = MetaWorldConfig(task="unused", cameras=(), max_steps=150)
    summary, episodes = run_evaluation(AgentFactory("random"), blind, TASKS, n_episodes=10)
    assert summary["overall"]["success_rate"] <= 0.1
    assert {e.length for e in episodes if not e.success} == {150}  # failures run to the step cap


def test_results_do_not_depend_on_worker_count():
    one, _ = run_evaluation(AgentFactory("expert", noise_std=0.3), BLIND, ["push", "reach"], n_episodes=3)
    two, _ = run_evaluation(
        AgentFactory("expert", noise_std=0.3), BLIND, ["push", "reach"], n_episodes=3, num_workers=2
    )
    assert one["episodes"] == two["episodes"]


def test_eval_job_writes_json_chart_and_videos(tmp_path, capsys):
    config = EvalConfig(output_dir=str(tmp_path))
    config.env = MetaWorldConfig(task="reach,window-close", cameras=("corner2", "gripperPOV"), image_size=32)
    config.eval.n_episodes, config.eval.videos_per_task = 2, 1
    summary = evaluate(config, progress=True)
    saved = json.loads((tmp_path / "eval_info.json").read_text())
    assert saved["per_task"]["reach"]["success_rate"] == summary["per_task"]["reach"]["success_rate"]
    assert [e["task"] for e in saved["episodes"]] == ["reach", "reach", "window-close", "window-close"]
    assert (tmp_path / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import av

    assert len(summary["videos"]) == 2
    with av.open(summary["videos"][0]) as video:
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert frames[0].shape == (32, 64, 3)  # both cameras side by side
    assert len(frames) == saved["episodes"][0]["length"]
    out = capsys.readouterr().out
    assert "Reach the goal position." in out and "[overall]" in out


def test_videos_need_a_camera():
    blind = MetaWorldConfig(task="reach", cameras=())
    with pytest.raises(ConfigError, match="videos need at least one camera"):
        run_evaluation(AgentFactory("expert"), blind, ["reach"], n_episodes=1, videos_per_task=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny SmolVLA with one 32 px `corner2` camera and Meta-World's 4-D state/action, saved with its
    processors the way the trainer saves checkpoints."""
    from smolvla import SmolVLAPolicy
    from smolvla.processors import TaskTokenizer, make_processors
    from smolvla.sim.tasks import INSTRUCTIONS

    torch.manual_seed(0)
    policy = SmolVLAPolicy.from_preset(
        "tiny",
        input_features={
            "observation.state": {"type": "STATE", "shape": [4]},
            "observation.images.corner2": {"type": "VISUAL", "shape": [3, 32, 32]},
        },
        output_features={"action": {"type": "ACTION", "shape": [4]}},
        resize_imgs_with_padding=[32, 32],
        chunk_size=5,
        n_action_steps=5,
        num_steps=2,
    )
    stats = {
        "observation.state": {"mean": torch.zeros(4), "std": torch.ones(4)},
        "action": {"mean": torch.zeros(4), "std": torch.full((4,), 0.5)},
    }
    tokenizer = TaskTokenizer.train(list(INSTRUCTIONS.values()), vocab_size=300)
    path = tmp_path_factory.mktemp("ckpt") / "pretrained_model"
    policy.save_pretrained(path, processors=make_processors(policy.config, stats, tokenizer))
    return path


def test_checkpoint_agent_runs_closed_loop(checkpoint, tmp_path):
    config = EvalConfig(output_dir=str(tmp_path))
    config.policy.path = str(checkpoint)
    config.env = MetaWorldConfig(task="reach", max_steps=12)  # cameras and size come from the checkpoint
    config.eval.n_episodes, config.eval.videos_per_task = 2, 1
    summary = evaluate(config, progress=False)
    task = summary["per_task"]["reach"]
    assert task["mean_length"] == 12 and task["success_rate"] == 0.0  # untrained: runs to the cap
    assert task["chunk_ms_mean"] > 0
    assert summary["config"]["policy"]["path"] == str(checkpoint)
    # Chunked: a new chunk every n_action_steps (5) calls → 3 chunk timings per 12-step episode.
    env = MetaWorldConfig(task="reach", cameras=("corner2",), image_size=32, max_steps=12)
    _, episodes = run_evaluation(SmolVLAAgent.from_pretrained(checkpoint), env, ["reach"], n_episodes=1)
    assert len(episodes[0].chunk_ms) == 3


def test_actions_per_chunk_are_an_eval_override(checkpoint, tmp_path):
    """`--policy.n_action_steps` re-plans more often without retraining; past the chunk it is refused by name."""
    env = MetaWorldConfig(task="reach", cameras=("corner2",), image_size=32, max_steps=12)
    agent = AgentFactory(str(checkpoint), n_action_steps=2)()
    _, episodes = run_evaluation(agent, env, ["reach"], n_episodes=1)
    assert agent.policy.config.n_action_steps == 2 and len(episodes[0].chunk_ms) == 6  # a chunk every 2 of 12 steps
    config = EvalConfig(output_dir=str(tmp_path / "eval"))
    config.policy.path, config.policy.n_action_steps = str(checkpoint), 6
    with pytest.raises(ConfigError, match=r"--policy.n_action_steps=6: expected 1 to .*chunk_size \(5\)"):
        evaluate(config, progress=False)
    assert not (tmp_path / "eval").exists()  # refused before anything ran or was written


def test_checkpoint_agent_is_deterministic_per_seed(checkpoint):
    agent = SmolVLAAgent.from_pretrained(checkpoint)
    obs = {"agent_pos": np.zeros(4, np.float32), "pixels": {"corner2": np.zeros((32, 32, 3), np.uint8)}, "task": "go"}
    agent.reset(seed=3)
    first = agent.select_action(obs)
    agent.reset(seed=3)
    np.testing.assert_array_equal(agent.select_action(obs), first)
    assert first.shape == (4,) and first.dtype == np.float32


def test_checkpoint_agent_names_a_missing_camera(checkpoint):
    agent = SmolVLAAgent.from_pretrained(checkpoint)
    obs = {"agent_pos": np.zeros(4, np.float32), "pixels": {"topview": np.zeros((32, 32, 3), np.uint8)}, "task": "go"}
    with pytest.raises(ConfigError, match=r"camera 'corner2'.*\['topview'\]"):
        agent.select_action(obs)


def test_unknown_policy_path():
    with pytest.raises(ConfigError, match="neither"):
        AgentFactory("/no/such/checkpoint")()


def test_an_instruction_override_is_what_the_agent_is_told():
    """`--env.instruction`: the scripted expert, which acts on the instruction it hears, told drawer-close's in the
    drawer-open scene, closes instead of opening; the summary names what it was told."""
    own, _ = run_evaluation(AgentFactory("expert"), BLIND, ["drawer-open"], n_episodes=3)
    told = MetaWorldConfig(task="unused", cameras=(), max_steps=500, instruction="Push the drawer closed.")
    swapped, _ = run_evaluation(AgentFactory("expert"), told, ["drawer-open"], n_episodes=3)
    assert own["per_task"]["drawer-open"]["success_rate"] == 1.0
    assert swapped["per_task"]["drawer-open"]["success_rate"] == 0.0
    assert swapped["per_task"]["drawer-open"]["instruction"] == "Push the drawer closed."
    with pytest.raises(SimError, match="instruction must be a non-empty sentence"):
        run_evaluation(AgentFactory("expert"), dataclasses.replace(told, instruction=" "), ["reach"], n_episodes=1)
