import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from smolvla.sim.agents import ExpertAgent, RandomAgent
from smolvla.sim.metaworld_env import CONTROL_FPS, MetaWorldConfig, MetaWorldEnv, SimError
from smolvla.sim.rollout import episode_seed, run_episode


@pytest.fixture(scope="module")
def env():
    env = MetaWorldEnv(MetaWorldConfig(task="push", cameras=("corner2", "gripperPOV"), image_size=32, max_steps=60))
    yield env
    env.close()


def test_observation_and_spaces(env):
    obs, info = env.reset(seed=3)
    assert info == {"task": "push", "instruction": "Push the puck to the goal.", "seed": 3}
    assert env.observation_space.contains(obs)
    assert obs["agent_pos"].shape == (4,) and obs["environment_state"].shape == (39,)
    assert np.array_equal(obs["agent_pos"], obs["environment_state"][:4])
    assert {k: v.shape for k, v in obs["pixels"].items()} == {"corner2": (32, 32, 3), "gripperPOV": (32, 32, 3)}
    assert env.render().shape == (32, 64, 3)
    assert env.fps == CONTROL_FPS == 80


@pytest.mark.filterwarnings("ignore:.*infinity")  # state bounds are unbounded by design
def test_gymnasium_env_checker():
    from gymnasium.utils.env_checker import check_env

    with MetaWorldEnv(task="reach", cameras=("topview",), image_size=16, max_steps=20) as env:
        check_env(env, skip_render_check=True)


def test_same_seed_same_trajectory_different_seed_different_goal(env):
    seed, other_seed = episode_seed(0, "push", 1), episode_seed(0, "push", 0)
    with MetaWorldEnv(MetaWorldConfig(task="push", image_size=32, max_steps=60)) as fresh:
        first = run_episode(fresh, ExpertAgent(noise_std=0.2), seed=seed, record=True)
    run_episode(env, ExpertAgent(), seed=other_seed)  # history (e.g. the last goal marker) must not matter
    again = run_episode(env, ExpertAgent(noise_std=0.2), seed=seed, record=True)
    assert again.length == first.length
    for key in ("observation.environment_state", "action", "observation.images.corner2"):
        np.testing.assert_array_equal(again.frames[key], first.frames[key])
    goal = lambda seed: env.reset(seed=seed)[0]["environment_state"][-3:]  # noqa: E731
    assert not np.allclose(goal(seed), goal(other_seed))


def test_corner_cameras_are_turned_upright(env):
    import mujoco

    env.reset(seed=0)
    raw = mujoco.Renderer(env.sim.model, 32, 32)
    raw.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    raw.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    raw.update_scene(env.sim.data, camera="corner2")
    upside_down = raw.render()
    raw.close()
    obs = env._observation(env.sim._get_obs())
    # MuJoCo renders Meta-World's corner cameras upside down (checked by eye on the rollout videos); both axes flip.
    np.testing.assert_array_equal(obs["pixels"]["corner2"], upside_down[::-1, ::-1])


def test_step_cap_and_success_flags():
    with MetaWorldEnv(task="reach", cameras=(), max_steps=5) as env:
        env.reset(seed=0)
        for _ in range(4):
            _, _, terminated, truncated, info = env.step(np.zeros(4))
            assert not terminated and not truncated and info["success"] is False
        assert env.step(np.zeros(4))[3] is True
        with pytest.raises(SimError, match="reset"):
            env.step(np.zeros(4))
        env.reset(seed=0)
        with pytest.raises(SimError, match="4 finite numbers"):
            env.step(np.array([0.0, np.nan, 0.0, 0.0]))
        with pytest.raises(SimError, match="4 finite numbers"):
            env.step(np.zeros(3))


def test_bad_settings_are_named():
    with pytest.raises(SimError) as err:
        MetaWorldEnv(task="reach", cameras=("wrist",))
    assert "'wrist'" in str(err.value) and "gripperPOV" in str(err.value) and "corner2" in str(err.value)
    with pytest.raises(SimError, match="render must be one of"):
        MetaWorldEnv(task="reach", render="pretty")
    with pytest.raises(SimError, match="unknown Meta-World env setting 'camera'"):
        MetaWorldEnv(task="reach", camera="corner2")


def test_lerobot_settings_move_corner2():
    config = MetaWorldConfig.lerobot("reach")
    assert (config.image_size, config.cameras, config.render) == (480, ("corner2",), "lerobot")
    with MetaWorldEnv(config, image_size=24) as env:
        np.testing.assert_allclose(env.sim.model.cam_pos[env.sim.model.camera("corner2").id], (0.75, 0.075, 0.7))
        assert env.sim.model.vis.quality.offsamples > 0  # default quality kept
        assert env.reset(seed=0)[0]["pixels"]["corner2"].shape == (24, 24, 3)


def test_lerobot_camera_pose_with_the_fast_render():
    """LeRobot's closer corner2 at the cheap render quality: the table fills more of the view."""

    def first_frame(**settings):
        with MetaWorldEnv(task="reach", cameras=("corner2", "gripperPOV"), image_size=32, **settings) as env:
            corner2 = env.sim.model.cam_pos[env.sim.model.camera("corner2").id].copy()
            assert env.sim.model.vis.quality.offsamples == 0
            return corner2, env.reset(seed=3)[0]["pixels"]

    default_pos, default = first_frame()
    moved_pos, moved = first_frame(camera_pose="lerobot")
    np.testing.assert_allclose(moved_pos, (0.75, 0.075, 0.7))
    assert not np.allclose(default_pos, moved_pos)
    assert np.abs(moved["corner2"].astype(float) - default["corner2"]).mean() > 5
    np.testing.assert_array_equal(moved["gripperPOV"], default["gripperPOV"])  # only corner2 moves
    with pytest.raises(SimError, match="camera_pose must be one of"):
        MetaWorldEnv(task="reach", camera_pose="closer")


def test_perturbed_views_move_the_camera_and_dim_the_light():
    def first_frame(**settings):
        with MetaWorldEnv(task="reach", cameras=("corner2",), image_size=32, **settings) as env:
            return env.reset(seed=3)[0]["pixels"]["corner2"].astype(np.float64)

    plain = first_frame()
    dark = first_frame(light_scale=0.5)
    assert dark.mean() < 0.8 * plain.mean()
    moved = first_frame(camera_offset=(0.0, 0.1, 0.0))
    assert np.abs(moved - plain).mean() > 5 and abs(moved.mean() - plain.mean()) < 0.2 * plain.mean()
    with pytest.raises(SimError, match="light_scale in"):
        MetaWorldEnv(task="reach", light_scale=-1.0)


@pytest.mark.parametrize("backend", ["osmesa", "not-a-backend"])
def test_missing_gl_backend_explains_the_fix(backend):
    code = (
        "from smolvla.sim.metaworld_env import MetaWorldEnv, SimError\n"
        "try:\n    MetaWorldEnv(task='reach', cameras=('corner2',), image_size=16)\n"
        "except SimError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYOPENGL_PLATFORM"}  # set by this process's mujoco import
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, "MUJOCO_GL": backend}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert backend in out.stdout and "MUJOCO_GL=egl" in out.stdout and "libegl1 libegl-mesa0" in out.stdout


def test_blind_agents_skip_rendering(env):
    episode = run_episode(env, RandomAgent(), seed=0)
    assert episode.frames is None
    assert env.reset(seed=0)[0]["pixels"] == {}  # rendering stays off until an agent that looks needs it
    env.render_pixels = True


@pytest.mark.parametrize(("task", "low_cm", "high_cm"), [("handle-pull", 6.3, 10.5), ("handle-press", 11.1, 17.2)])
def test_varied_joint_starts_place_the_handle_short_of_success_by_seed(task, low_cm, high_cm):
    """`vary_joint_start` draws the handle's start from the episode's seed inside its range (the state's "previous
    frame" agrees, as after Meta-World's own reset); no start is already a success, and the expert still succeeds
    from them. Off, the handle starts where Meta-World puts it, at one height (its box moves by a millimetre)."""
    fixed = MetaWorldEnv(MetaWorldConfig(task=task, cameras=()))
    varied = MetaWorldEnv(MetaWorldConfig(task=task, cameras=(), vary_joint_start=True))
    fixed.render_pixels = varied.render_pixels = False
    own = [100 * fixed.reset(seed=seed)[0]["environment_state"][6] for seed in range(6)]
    heights = []
    for seed in range(6):
        state = varied.reset(seed=seed)[0]["environment_state"]
        assert np.array_equal(state[4:7], state[22:25])
        assert np.array_equal(varied.reset(seed=seed)[0]["environment_state"], state)
        heights.append(100 * state[6])
        assert not varied.step(np.zeros(4, dtype=np.float32))[4]["success"]
    assert all(low_cm <= h <= high_cm for h in heights) and np.ptp(heights) > 2.0 > 0.2 > np.ptp(own), (heights, own)
    assert run_episode(varied, ExpertAgent(), 3, 0).success
    fixed.close()
    varied.close()
    with pytest.raises(SimError, match=r"vary_joint_start is defined for .*'handle-pull'.*not 'reach'"):
        MetaWorldEnv(task="reach", cameras=(), vary_joint_start=True)


def test_joint_start_sets_the_range_varied_starts_are_drawn_from():
    """`joint_start` replaces the task's default range: the same seeds place the handle inside the given joint range
    (up to 11.9 cm for handle-pull, just short of where it counts as pulled, 12.2 cm), the expert still succeeds from
    there; a range outside the joint's travel, reversed, or without varied starts is one clear error."""
    config = MetaWorldConfig(task="handle-pull", cameras=(), vary_joint_start=True, joint_start=(-0.05, -0.045))
    env = MetaWorldEnv(config)
    env.render_pixels = False
    heights = []
    for seed in range(4):
        heights.append(100 * env.reset(seed=seed)[0]["environment_state"][6])
        assert not env.step(np.zeros(4, dtype=np.float32))[4]["success"]
    assert all(11.3 <= h <= 12.0 for h in heights) and np.ptp(heights) > 0.1, heights
    assert run_episode(env, ExpertAgent(), 3, 0).success
    env.close()
    for bad, message in (
        (
            {"joint_start": (-0.2, -0.05)},
            r"joint_start must be \(low, high\) .* travel \[-0.1, 0.0\], got \[-0.2, -0.05\]",
        ),
        ({"joint_start": (-0.05, -0.06)}, r"low <= high"),
        ({"joint_start": (-0.06, -0.05), "vary_joint_start": False}, r"set vary_joint_start too"),
    ):
        with pytest.raises(SimError, match=message):
            MetaWorldEnv(dataclasses.replace(config, **bad))


def test_hand_start_spread_draws_the_hand_start_by_seed_inside_its_box():
    """`hand_start_spread` starts the hand anywhere in a box around Meta-World's hand start, drawn from the episode's
    seed (the same seed, the same start), without disturbing the handle; the expert still succeeds from there. Unset,
    the hand starts where Meta-World puts it; a spread past the hand's reach, negative or not 3 numbers is refused."""
    spread = (0.1, 0.05, 0.08)
    fixed = MetaWorldEnv(MetaWorldConfig(task="handle-pull", cameras=()))
    spread_env = MetaWorldEnv(MetaWorldConfig(task="handle-pull", cameras=(), hand_start_spread=spread))
    fixed.render_pixels = spread_env.render_pixels = False
    own = np.stack([fixed.reset(seed=seed)[0]["environment_state"] for seed in range(6)])
    drawn = np.stack([spread_env.reset(seed=seed)[0]["environment_state"] for seed in range(6)])
    home = fixed.sim.hand_init_pos
    assert np.ptp(own[:, :3], axis=0).max() < 0.01  # Meta-World's one start (the hand settles within millimetres)
    assert (np.abs(drawn[:, :3] - home) <= np.asarray(spread) + 0.01).all()
    assert (np.ptp(drawn[:, :3], axis=0) > np.asarray(spread) / 2).all(), drawn[:, :3]
    np.testing.assert_allclose(drawn[:, 4:7], own[:, 4:7], atol=1e-4)  # the handle where it would be anyway
    assert np.array_equal(spread_env.reset(seed=4)[0]["environment_state"], drawn[4])
    assert run_episode(spread_env, ExpertAgent(), 3, 0).success
    fixed.close()
    spread_env.close()
    message = r"hand_start_spread must be 3 numbers >= 0 .* at most \[0\.5, 0\.2, 0\.15\]"
    for bad in ((0.1, 0.05, 0.2), (0.1, -0.05, 0.08), (0.1, 0.05)):
        with pytest.raises(SimError, match=message):
            MetaWorldEnv(task="handle-pull", cameras=(), hand_start_spread=bad)


def test_steps_after_success_carry_the_motion_on_and_then_end_the_episode():
    """With `steps_after_success` the episode ends that many steps after its first success, not at it (terminated,
    not truncated), and the expert goes on pulling: the handle ends higher than where it crossed the threshold.
    Unset, an episode still ends at its first success; a negative count is refused."""
    config = MetaWorldConfig(task="handle-pull", cameras=())
    envs = [MetaWorldEnv(config), MetaWorldEnv(dataclasses.replace(config, steps_after_success=30))]
    plain, carried = (run_episode(env, ExpertAgent(), 3, 0, record=True) for env in envs)
    assert plain.success and carried.success and carried.length == plain.length + 30 < config.max_steps
    shared = plain.frames["observation.environment_state"]
    assert np.array_equal(carried.frames["observation.environment_state"][: plain.length], shared)
    handle = carried.frames["observation.environment_state"][:, 6]
    assert handle[-1] > handle[plain.length - 1] + 0.01, (handle[plain.length - 1], handle[-1])
    for env in envs:
        env.close()
    with pytest.raises(SimError, match="steps_after_success >= 0"):
        MetaWorldEnv(task="reach", cameras=(), steps_after_success=-1)
