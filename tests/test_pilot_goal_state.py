"""pilot_goal_state: the expert reads the goal head's answer in the state's padded slots, in training and at
evaluation, and evaluation agents (worker processes too) are built with the run's saved head attached."""

import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo is first imported

from benchmarks import pilot_aux_goal, pilot_goal_state
from smolvla.bench import make_batch
from smolvla.errors import ConfigError
from smolvla.eval.agent import AgentFactory
from smolvla.keys import STATE_KEY
from smolvla.policy import SmolVLAPolicy

CAMERAS = ("corner2", "gripperPOV")


def tiny_policy() -> SmolVLAPolicy:
    torch.manual_seed(0)
    cameras = {f"observation.images.{c}": {"type": "VISUAL", "shape": [3, 32, 32]} for c in CAMERAS}
    return SmolVLAPolicy.from_preset(
        "tiny",
        input_features={STATE_KEY: {"type": "STATE", "shape": [4]}, **cameras},
        output_features={"action": {"type": "ACTION", "shape": [4]}},
        resize_imgs_with_padding=[32, 32], chunk_size=5, n_action_steps=5, num_steps=2,
    )  # fmt: skip


def record_state_proj_inputs(policy) -> list[torch.Tensor]:
    """What the state projection is given from now on (installed before the pilot wraps it: it sees the fed state)."""
    seen, project = [], policy.model.state_proj.forward

    def state_proj(state):
        seen.append(state.detach().clone())
        return project(state)

    policy.model.state_proj.forward = state_proj
    return seen


@pytest.mark.parametrize(
    ("feed", "relative", "hide_hand"),
    [(("goal",), False, ""), (("goal", "object"), False, ""), (("object",), True, ""), (("object",), True, "zx")],
)
def test_the_expert_reads_the_heads_answers_in_the_state(feed, relative, hide_hand):
    """The state projection reads the head's answers after the robot's state (`--relative`: each answered position
    in metres minus the hand's, from the normalized state by its statistics, in decimetres; `--hide_hand`: those
    hand axes blanked in the robot's state, after the relative answer was read from them)."""
    policy = tiny_policy()
    keys = set(policy.state_dict())
    batch = make_batch(policy, 3, 8, "cpu")
    noise, time = policy.sample_noise_and_time(3, torch.Generator().manual_seed(1))
    robot_state = policy.prepare_observation(batch).state
    seen = record_state_proj_inputs(policy)
    hooks = pilot_goal_state.GoalStateHooks(
        ["object", "goal"], weight=0.5, feed=feed, relative=relative, hide_hand=hide_hand
    )
    hooks.mean, hooks.std = torch.arange(6.0), torch.full((6,), 2.0)  # the goal second: at 3:6
    hooks.hand_mean, hooks.hand_std = torch.tensor([0.1, 0.6, 0.2]), torch.tensor([0.05, 0.1, 0.04])
    hooks.attach(policy, None)
    env_state = torch.randn(3, 39)
    hooks.targets({pilot_aux_goal.ENV_STATE: env_state}, batch, noise, time, 0)

    policy.train().compute_loss(batch, noise=noise, time=time).backward()
    policy.eval().compute_loss(batch, noise=noise, time=time)
    with torch.no_grad():
        tokens = policy.model.vlm_with_expert.embed_images(torch.cat(policy.prepare_observation(batch).images))
        answer = hooks.head(hooks.tokens(tokens, len(CAMERAS)))
    if relative:  # object only: its metres minus the hand's
        hand = robot_state[:, :3] * hooks.hand_std + hooks.hand_mean
        answer = (answer[:, 0:3] * 2.0 + torch.arange(3.0) - hand) / 0.1
    else:
        answer = torch.cat([answer[:, 3:6], answer[:, 0:3]], dim=1)[:, : 3 * len(feed)]  # in the feed's order
    end = 4 + answer.shape[1]
    hidden = ["xyz".index(axis) for axis in hide_hand]
    shown = [i for i in range(4) if i not in hidden]
    assert len(seen) == 2  # one prefix in training, one in evaluation: both given the head's answer
    for fed in seen:
        torch.testing.assert_close(fed[:, 4:end], answer, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fed[:, shown], robot_state[:, shown])
        assert not fed[:, hidden].any()
        assert not fed[:, end:].any()  # the rest of the padding stays zero
    assert all(p.grad is not None for p in hooks.head.parameters())  # the head still learns, from its own loss
    assert set(policy.state_dict()) == keys  # no new parameter: the checkpoint keeps its shape


def test_what_is_fed_must_fit_and_be_answered():
    policy = tiny_policy()
    policy.config.max_state_dim = 9
    pilot_goal_state.GoalStateHooks(["goal", "object"], weight=1.0).feed_state(policy)  # 4 + 3 slots fit
    both = pilot_goal_state.GoalStateHooks(["goal", "object"], weight=1.0, feed=("goal", "object"))
    with pytest.raises(ConfigError, match="--feed goal,object needs 6 free state slots after the state's 4"):
        both.feed_state(policy)
    with pytest.raises(ConfigError, match=r"--feed object: the head answers only \['goal'\]"):
        pilot_goal_state.GoalStateHooks(["goal"], weight=1.0, feed=("object",))
    with pytest.raises(ConfigError, match="--hide_hand zw: expected distinct axes among x, y, z"):
        pilot_goal_state.GoalStateHooks(["goal"], weight=1.0, relative=True, hide_hand="zw")
    with pytest.raises(ConfigError, match="--hide_hand z needs --relative"):
        pilot_goal_state.GoalStateHooks(["goal"], weight=1.0, hide_hand="z")


@pytest.mark.parametrize(("relative", "hide_hand"), [(False, ""), (True, ""), (True, "z")])
def test_evaluation_agents_are_built_with_the_runs_head(tmp_path, relative, hide_hand):
    """`GoalFedFactory` (pickled, as workers receive it) loads the head the pilot saved beside the checkpoints and
    acts exactly as the plain agent with that head attached, fed what it was trained with (goal and object here,
    as they are or relative to the hand, with the hand's statistics and its hidden axes); without it the actions
    differ; no head, no agent."""
    from smolvla.processors import TaskTokenizer, make_processors
    from smolvla.sim.tasks import INSTRUCTIONS

    policy = tiny_policy()
    stats = {STATE_KEY: {"mean": torch.zeros(4), "std": torch.ones(4)},
             "action": {"mean": torch.zeros(4), "std": torch.ones(4)}}  # fmt: skip
    tokenizer = TaskTokenizer.train(list(INSTRUCTIONS.values()), vocab_size=300)
    run = tmp_path / "train"
    checkpoint = run / "checkpoints" / "000002" / "pretrained_model"
    policy.save_pretrained(checkpoint, processors=make_processors(policy.config, stats, tokenizer))
    hooks = pilot_goal_state.GoalStateHooks(
        ["goal", "object"], weight=1.0, feed=("goal", "object"), relative=relative, hide_hand=hide_hand
    )
    hooks.mean, hooks.std = torch.zeros(6), torch.ones(6)
    hooks.hand_mean, hooks.hand_std = torch.tensor([0.1, 0.6, 0.2]), torch.tensor([0.05, 0.1, 0.04])
    hooks.build_head(policy)
    with torch.no_grad():
        hooks.head[-1].bias.fill_(3.0)  # a goal far from the zero padding, so reading it must change the actions
    with pytest.raises(ConfigError, match=r"aux_head\.pt is missing"):
        pilot_goal_state.GoalFedFactory(str(checkpoint))()
    hooks.train_and_keep_head(lambda config, **kwargs: None)(SimpleNamespace(output_dir=run))

    rng = np.random.default_rng(0)
    observation = {"pixels": {c: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for c in CAMERAS},
                   "agent_pos": rng.standard_normal(4).astype(np.float32), "task": "reach"}  # fmt: skip

    def chunk(agent) -> np.ndarray:
        agent.reset(seed=0)
        return np.stack([agent.select_action(observation) for _ in range(5)])

    fed = pickle.loads(pickle.dumps(pilot_goal_state.GoalFedFactory(str(checkpoint))))()
    plain = AgentFactory(str(checkpoint))()
    unfed = chunk(plain)
    hooks.feed_state(plain.policy)
    np.testing.assert_allclose(chunk(fed), chunk(plain), atol=1e-5)
    assert not np.allclose(chunk(fed), unfed, atol=1e-3)


def test_compiled_loss_with_fewer_scenes_matches_eager():
    """`--compile` traces the policy's loss through the pilot's patches (the tower's tokens kept for the head, the
    answers fed into the state) and must give eager's loss and gradients; `--scene_batch` sets how many goal scenes
    each micro-batch adds, whatever the batch size."""
    rng = torch.Generator().manual_seed(2)
    frames = {c: torch.randint(0, 255, (6, 3, 32, 32), generator=rng, dtype=torch.uint8) for c in CAMERAS}
    scenes, env_state = (frames, torch.randn(6, 39, generator=rng)), torch.randn(3, 39, generator=rng)

    def train_step(compile_loss: bool) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        policy = tiny_policy()
        batch = make_batch(policy, 3, 8, "cpu")
        noise, time = policy.sample_noise_and_time(3, torch.Generator().manual_seed(1))
        hooks = pilot_goal_state.GoalStateHooks(["goal", "object"], weight=0.5, feed=("goal", "object"),
                                                render_scenes=lambda: scenes, scene_batch_size=2,
                                                compile_loss=compile_loss)  # fmt: skip
        hooks.mean, hooks.std = torch.zeros(6), torch.ones(6)
        drawn, draw = [], hooks.scene_batch
        hooks.scene_batch = lambda config, size, device: drawn.append(size) or draw(config, size, device)
        hooks.attach(policy, None)
        hooks.targets({pilot_aux_goal.ENV_STATE: env_state}, batch, noise, time, 0)
        loss = policy.train().compute_loss(batch, noise=noise, time=time)
        loss.backward()
        grads = [p.grad.clone() for p in [*hooks.head.parameters(), *policy.parameters()] if p.grad is not None]
        return loss.detach(), grads, drawn

    eager, eager_grads, eager_drawn = train_step(False)
    compiled, compiled_grads, compiled_drawn = train_step(True)
    assert eager_drawn == compiled_drawn == [2]
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
    assert len(compiled_grads) == len(eager_grads) > 2
    for c, e in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(c, e, atol=1e-4, rtol=1e-3)
