"""A Gymnasium wrapper around one Meta-World task with language, cameras, seeding and a step cap.

Observations follow LeRobot's simulator convention:
  `agent_pos` (4,) float32         end-effector xyz + gripper opening (what SmolVLA gets as `observation.state`)
  `environment_state` (39,) float32  Meta-World's full state vector incl. object and goal (what the experts read)
  `pixels` {camera: (H, W, 3) uint8}  one image per configured camera
Actions are 4-D in [-1, 1] (end-effector xyz delta, gripper effort). An episode ends on success or at the step cap.

Rendering is the slow part of simulation on a CPU. The default "fast" settings switch off multisampling, shadows and
reflections (~10x faster than Meta-World's defaults under Mesa's llvmpipe); "lerobot" keeps the defaults and moves
`corner2` to where LeRobot's Meta-World evaluation puts it, for comparable images.
"""

from __future__ import annotations

import atexit
import os
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from smolvla.errors import SmolVLAError
from smolvla.sim.tasks import canonical, instruction

os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo reads it at import: set it before anything imports mujoco

try:
    import gymnasium as gym
except ImportError as e:  # pragma: no cover - depends on the install
    raise SmolVLAError("the simulator needs the sim extra: pip install 'smolvla[sim]'") from e

RENDER_SETTINGS = ("fast", "lerobot")
CAMERA_POSES = ("metaworld", "lerobot")
CONTROL_FPS = 80  # every Meta-World task: 2.5 ms physics step x frame_skip 5 = 12.5 ms per action
STATE_NAMES = ["x", "y", "z", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
LEROBOT_CORNER2_POS = (0.75, 0.075, 0.7)
# Task → (qpos index, low, high): where the task's articulated part may start under `vary_joint_start`, always short
# of the task's success (a pull starts below the pulled height it must reach, a press above the pressed one). Meta-World
# itself starts each at one end of its travel: every pull demonstration then shows a low handle and every press a raised
# one, and a policy can tell the two apart by the scene alone.
JOINT_STARTS = {
    "handle-press": (9, -0.06, -0.001),  # handle top 11.2-17.1 cm; pressed (success) at 9.5 cm or below
    "handle-pull": (9, -0.1, -0.06),  # handle 6.4-10.4 cm; pulled (success) at 12.2 cm or above
}
HAND_STREAM = 100  # the random stream hand starts are drawn from, apart from the joint starts' (keyed by qpos index)
GL_HELP = (
    "MuJoCo needs an offscreen OpenGL backend: run with MUJOCO_GL=egl (the default smolvla sets when the variable is "
    "unset) and, on Debian/Ubuntu, install `libegl1 libegl-mesa0 libgl1-mesa-dri` (Mesa's software renderer works "
    "without a GPU)"
)


_RENDERERS: weakref.WeakSet = weakref.WeakSet()


def _close_renderers() -> None:
    for renderer in list(_RENDERERS):
        renderer.close()


def _track(renderer) -> None:
    """Close live renderers at exit *before* MuJoCo terminates EGL (its own atexit hook, registered at the first
    context; atexit runs last-in first-out), else every process prints an EGL error while shutting down."""
    if not _RENDERERS:
        atexit.unregister(_close_renderers)
        atexit.register(_close_renderers)
    _RENDERERS.add(renderer)


class SimError(SmolVLAError, RuntimeError):
    """The simulator cannot be started or was given an invalid camera, action or setting."""


@dataclass
class MetaWorldConfig:
    """One Meta-World task as a SmolVLA environment."""

    task: str = "pick-place"
    cameras: tuple[str, ...] = ("corner2", "gripperPOV")
    image_size: int = 128  # square images, as SmolVLA resizes to a square anyway
    max_steps: int = 500  # LeRobot's episode cap for Meta-World
    render: str = "fast"  # "fast" or "lerobot" (LeRobot's render quality, and its camera pose)
    # Where `corner2` stands: Meta-World's own pose, or LeRobot's (closer, the table fills the view; at 64 px the
    # objects and goal markers cover several times the pixels). "lerobot" with the fast render keeps images cheap.
    camera_pose: str = "metaworld"
    success_terminates: bool = True
    # Steps the episode goes on after its first success before it terminates: demonstrations that carry the motion
    # to its end (a handle pulled to the top of its travel), not stopped the moment it crosses the success threshold.
    steps_after_success: int = 0
    # Perturbed views, to test what a policy learnt from one set-up does in another (robustness, augmentation):
    camera_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)  # metres added to every configured camera's position
    light_scale: float = 1.0  # multiplies the scene's light (diffuse and ambient, lamps and headlight)
    # What the policy is told instead of the task's own instruction (none: the task's): e.g. a paired task's
    # instruction in the same scene, to check that language, not the scene, decides what the policy does.
    instruction: str | None = None
    # Start the task's articulated part anywhere on its travel short of success (tasks in JOINT_STARTS), drawn from
    # the episode's seed: more varied demonstrations, so a policy must find the handle where it is, not where it was.
    vary_joint_start: bool = False
    # The (low, high) joint positions `vary_joint_start` draws from, instead of the task's JOINT_STARTS range: e.g.
    # pulls that start anywhere short of success, (-0.1, -0.045) for handle-pull (6.4-11.9 cm). Joint units (metres of
    # the handle's slide), within the joint's travel; a start past the task's success makes a one-step episode.
    joint_start: tuple[float, float] | None = None
    # Half-widths (x, y, z metres) of a box around Meta-World's hand start that the hand's start is drawn from, by the
    # episode's seed. Meta-World starts the hand at one point: every demonstration then descends about as far, and a
    # policy can learn "descend that far" instead of "go to the handle". Zero: Meta-World's start.
    hand_start_spread: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def lerobot(cls, task: str) -> MetaWorldConfig:
        """LeRobot's evaluation set-up: one 480 px `corner2` view at its moved position, default render quality."""
        return cls(task=task, cameras=("corner2",), image_size=480, render="lerobot")


def _import_metaworld():
    try:
        import metaworld.env_dict
        import metaworld.policies
    except ModuleNotFoundError as e:
        raise SimError(f"Meta-World is not installed (no module {e.name!r}): pip install 'smolvla[sim]'") from e
    except (ImportError, RuntimeError, AttributeError) as e:  # mujoco / PyOpenGL validate the GL platform at import
        raise SimError(f"MuJoCo could not start with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: {e}. {GL_HELP}") from e
    return metaworld


class MetaWorldEnv(gym.Env):
    """One Meta-World task as a Gymnasium env; see the module docstring."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, config: MetaWorldConfig | None = None, **overrides: Any):
        self.render_mode = "rgb_array"
        config = config or MetaWorldConfig()
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise SimError(f"unknown Meta-World env setting {key!r}")
            setattr(config, key, value)
        if config.render not in RENDER_SETTINGS:
            raise SimError(f"render must be one of {RENDER_SETTINGS}, got {config.render!r}")
        if config.camera_pose not in CAMERA_POSES:
            raise SimError(f"camera_pose must be one of {CAMERA_POSES}, got {config.camera_pose!r}")
        if len(config.camera_offset) != 3 or not 0.0 <= config.light_scale <= 10.0:
            raise SimError(
                f"camera_offset must be 3 numbers (x, y, z metres) and light_scale in [0, 10], got "
                f"{list(config.camera_offset)}, {config.light_scale}"
            )
        if config.image_size < 8 or config.max_steps < 1 or config.steps_after_success < 0:
            raise SimError(
                f"image_size must be >= 8, max_steps >= 1 and steps_after_success >= 0, got {config.image_size}, "
                f"{config.max_steps}, {config.steps_after_success}"
            )
        self.config = config
        self.task = canonical(config.task)
        if config.instruction is not None and not config.instruction.strip():
            raise SimError("instruction must be a non-empty sentence (or unset for the task's own)")
        self.instruction = config.instruction or instruction(self.task)
        if config.vary_joint_start and self.task not in JOINT_STARTS:
            raise SimError(f"vary_joint_start is defined for {sorted(JOINT_STARTS)}, not {self.task!r}")
        if config.joint_start is not None and not config.vary_joint_start:
            raise SimError("joint_start sets the range vary_joint_start draws from: set vary_joint_start too")
        metaworld = _import_metaworld()
        sim = metaworld.env_dict.ALL_V3_ENVIRONMENTS[f"{self.task}-v3"]()
        # Goal-observable multi-task mode (what MT1/MT10/MT50 use and the experts need), new goal at every reset
        # drawn from the env's own seeded generator.
        sim._partially_observable = False
        del sim.sawyer_observation_space  # cached property: recomputed for the new observability
        sim._freeze_rand_vec = False
        sim.seeded_rand_vec = True
        sim._set_task_called = True
        sim.max_path_length = config.max_steps
        self.sim = sim
        self._joint_start = self._joint_start_range() if config.vary_joint_start else None
        self._hand_home = sim.hand_init_pos.copy()
        self._hand_spread = self._hand_start_spread()
        self.fps = round(1.0 / (sim.model.opt.timestep * sim.frame_skip))
        self.cameras = tuple(config.cameras)
        known = [sim.model.camera(i).name for i in range(sim.model.ncam)]
        bad = [c for c in self.cameras if c not in known]
        if bad:
            raise SimError(f"unknown camera(s) {bad} for Meta-World; valid cameras: {known}")
        self._renderer = self._make_renderer() if self.cameras else None

        size = config.image_size
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict(
            {
                "agent_pos": gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32),
                "environment_state": gym.spaces.Box(-np.inf, np.inf, shape=(39,), dtype=np.float32),
                "pixels": gym.spaces.Dict(
                    {c: gym.spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8) for c in self.cameras}
                ),
            }
        )
        self.metadata = {**self.metadata, "render_fps": self.fps}
        self.render_pixels = True  # False skips rendering (observations then have no pixels): for blind agents
        self._steps, self._success_at = 0, None

    def _make_renderer(self):
        import mujoco  # after MUJOCO_GL is set (above), and only for rendering envs

        model, size = self.sim.model, self.config.image_size
        if self.config.render == "fast":
            model.vis.quality.offsamples = 0
        if "lerobot" in (self.config.render, self.config.camera_pose):
            model.cam_pos[model.camera("corner2").id] = LEROBOT_CORNER2_POS
        for camera in self.cameras:
            model.cam_pos[model.camera(camera).id] += np.asarray(self.config.camera_offset, dtype=np.float64)
        if self.config.light_scale != 1.0:
            scale = self.config.light_scale
            model.light_diffuse[:] *= scale
            model.light_ambient[:] *= scale
            model.vis.headlight.diffuse[:] = np.asarray(model.vis.headlight.diffuse) * scale
            model.vis.headlight.ambient[:] = np.asarray(model.vis.headlight.ambient) * scale
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        try:
            renderer = mujoco.Renderer(model, size, size)
        except Exception as e:  # each GL backend fails differently (AttributeError, RuntimeError, mujoco.FatalError)
            raise SimError(
                f"offscreen rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} "
                f"({type(e).__name__}: {e}). {GL_HELP}"
            ) from e
        _track(renderer)
        if self.config.render == "fast":
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return renderer

    # --- gymnasium API ---
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """New episode; the object and goal placement is a pure function of `seed`."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        self.sim.seed(int(seed))
        if self._hand_spread.any():  # Meta-World moves the hand to hand_init_pos first thing in its reset
            offset = np.random.default_rng([int(seed), HAND_STREAM]).uniform(-self._hand_spread, self._hand_spread)
            self.sim.hand_init_pos = self._hand_home + offset
        state, _ = self.sim.reset()
        if self.config.vary_joint_start:
            state = self._vary_joint_start(int(seed))
        # Meta-World moves the goal marker only inside step(): without this the first image of an episode shows
        # the previous episode's goal, so the same seed would render differently depending on history.
        for site, position in self.sim._target_site_config:
            self.sim._set_pos_site(site, position)
        self._steps, self._success_at = 0, None
        return self._observation(state), {"task": self.task, "instruction": self.instruction, "seed": int(seed)}

    def _joint_start_range(self) -> tuple[float, float]:
        """`joint_start` checked against the joint's travel, or the task's JOINT_STARTS range when unset."""
        index, *default = JOINT_STARTS[self.task]
        if self.config.joint_start is None:
            return tuple(default)
        model = self.sim.model
        joint = int(np.flatnonzero(model.jnt_qposadr == index)[0])
        travel = model.jnt_range[joint].tolist()
        start = tuple(float(x) for x in self.config.joint_start)
        if len(start) != 2 or not travel[0] <= start[0] <= start[1] <= travel[1]:
            raise SimError(
                f"joint_start must be (low, high) with low <= high inside the {self.task} joint's travel {travel}, "
                f"got {list(self.config.joint_start)}"
            )
        return start

    def _hand_start_spread(self) -> np.ndarray:
        """`hand_start_spread` checked: three numbers >= 0 that keep every start inside the hand's reach."""
        spread, home, sim = np.asarray(self.config.hand_start_spread, dtype=np.float64), self._hand_home, self.sim
        reach = np.minimum(home - sim.mocap_low, sim.mocap_high - home)
        if spread.shape != (3,) or not ((spread >= 0) & (spread <= reach)).all():
            raise SimError(
                f"hand_start_spread must be 3 numbers >= 0 (x, y, z metres) within the hand's reach from its start "
                f"{np.round(home, 3).tolist()}, at most {np.round(reach, 3).tolist()}; "
                f"got {list(self.config.hand_start_spread)}"
            )
        return spread

    def _vary_joint_start(self, seed: int) -> np.ndarray:
        """Move the articulated part to a seeded point of its start range; the state as if it started there."""
        index, (low, high) = JOINT_STARTS[self.task][0], self._joint_start
        sim = self.sim
        qpos, qvel = sim.data.qpos.copy(), sim.data.qvel.copy()
        qpos[index], qvel[index] = np.random.default_rng([seed, index]).uniform(low, high), 0.0
        sim.set_state(qpos, qvel)
        if hasattr(sim, "_handle_init_pos"):  # handle-press measures its reward from the handle's start
            sim._handle_init_pos = sim._get_pos_objects()
        sim._prev_obs = sim._get_curr_obs_combined_no_goal()  # the 39-d state repeats the first frame as "previous"
        return sim._get_obs()

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (4,) or not np.isfinite(action).all():
            raise SimError(f"Meta-World actions are 4 finite numbers, got {np.asarray(action).tolist()}")
        if self._steps >= self.config.max_steps:
            raise SimError("the episode is over (step cap reached): call reset()")
        state, reward, _, _, info = self.sim.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        success = bool(info["success"])
        if success and self._success_at is None:
            self._success_at = self._steps
        terminated = (
            self.config.success_terminates
            and self._success_at is not None
            and self._steps - self._success_at >= self.config.steps_after_success
        )
        truncated = not terminated and self._steps >= self.config.max_steps
        info = {**info, "success": success, "steps": self._steps}
        return self._observation(state), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The configured cameras side by side, (H, W * n_cameras, 3) uint8."""
        if not self.cameras:
            raise SimError("render() needs at least one camera in MetaWorldConfig.cameras")
        return np.concatenate(list(self._pixels().values()), axis=1)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            _RENDERERS.discard(self._renderer)
            self._renderer = None
        self.sim.close()

    # --- observations ---
    def _pixels(self) -> dict[str, np.ndarray]:
        out = {}
        for camera in self.cameras:
            self._renderer.update_scene(self.sim.data, camera=camera)
            image = self._renderer.render()
            if camera.startswith("corner"):  # Meta-World's corner cameras are mounted upside down
                image = image[::-1, ::-1]
            out[camera] = np.ascontiguousarray(image)
        return out

    def _observation(self, state: np.ndarray) -> dict[str, Any]:
        state = state.astype(np.float32)
        pixels = self._pixels() if self.render_pixels else {}
        return {"agent_pos": state[:4].copy(), "environment_state": state, "pixels": pixels}

    def dataset_features(self) -> dict[str, dict[str, Any]]:
        """LeRobot feature specs of what this env records: state, full state, action and one video per camera."""
        size = self.config.image_size
        return {
            "observation.state": {"dtype": "float32", "shape": [4], "names": STATE_NAMES},
            "observation.environment_state": {"dtype": "float32", "shape": [39], "names": None},
            "action": {"dtype": "float32", "shape": [4], "names": ACTION_NAMES},
            **{f"observation.images.{c}": {"dtype": "video", "shape": [size, size, 3]} for c in self.cameras},
        }
