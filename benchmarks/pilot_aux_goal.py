"""Auxiliary-goal pilot: `bench_metaworld.py` with the vision tower also taught to say where the goal is.

    .venv/bin/python benchmarks/pilot_aux_goal.py --config benchmarks/configs/metaworld_pilots/aux_goal.yaml

The oracle pilot showed that the tiny policy solves reach when the state tells it the goal (90 %) and stays at
chance when it must find the goal in the pixels: flow matching alone gives the tower too weak a signal to learn to
locate a one-pixel marker from 50 demonstrations. Here the policy sees exactly what it sees in every other recipe
(cameras + 4-D state, nothing privileged at evaluation), but during training a small head reads the camera tokens
and regresses the goal's position (and the first object's), which the simulator records in `environment_state`.
Its loss, added to the flow-matching loss, tells the tower what to look for. The head lives outside the policy (the
checkpoint is unchanged; the head is kept beside it in `aux_head.pt`, so training resumed mid-way starts a fresh
head); validation losses stay flow matching alone.
After training, the head is asked where the goal is at evaluation starts no demonstration showed (`goal_error`):
whether the tower learnt to locate the goal or only to recognise its training scenes.
With `--goal_scenes N` the head also learns from N fresh starts per task (rendered once, when training starts; goal and
object recorded, no actions): fifty demonstrations show the tower fifty goals, which it can memorise; thousands of
goals can only be fitted by locating the marker. A batch of them (as large as the training batch) goes through the
tower and the head at every micro-batch (`--scene_batch` fewer), so the tower is taught to locate on scenes the
policy never imitates. `--compile` compiles the policy's loss (patches included) and the scenes' tower pass: the
recipe's own `compile_model` would also trace the head's bookkeeping, so it stays false.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_language_swap, bench_metaworld
from benchmarks.pilot_oracle import GOAL, OBJECT
from smolvla.errors import ConfigError
from smolvla.eval.agent import SmolVLAAgent
from smolvla.keys import IMAGE_PREFIX
from smolvla.model.batch import prepare_images
from smolvla.sim.metaworld_env import MetaWorldEnv
from smolvla.sim.rollout import episode_seed
from smolvla.sim.tasks import resolve_tasks
from smolvla.train import trainer
from smolvla.train.hooks import TrainHooks

ENV_STATE = "observation.environment_state"
# Where Meta-World's 39-D observation keeps them (goal-observable mode, which smolvla uses).
TARGETS = {"goal": GOAL, "object": OBJECT}
HEAD = "aux_head.pt"
PRINT_EVERY = 250  # micro-batches
SCENE_SEED = 5000  # the goal scenes' starts: apart from collection's (seed 0) and the evaluations' (1000, 3000)


def task_scenes(recipe, task: str, per_task: int) -> tuple[dict[str, Tensor], Tensor]:
    """`per_task` fresh starts of `task` as the recipe's cameras see them ({camera: (N, 3, H, W) uint8}) and their
    39-D states (N, 39)."""
    frames: dict[str, list[Tensor]] = {camera: [] for camera in recipe.collect.cameras}
    states = []
    env = MetaWorldEnv(bench_metaworld.env_config(recipe, task))
    for start in range(per_task):
        observation, _ = env.reset(seed=episode_seed(SCENE_SEED, task, start))
        for camera, pixels in observation["pixels"].items():
            frames[camera].append(torch.from_numpy(pixels).permute(2, 0, 1))
        states.append(torch.from_numpy(observation["environment_state"]))
    env.close()
    return {camera: torch.stack(f) for camera, f in frames.items()}, torch.stack(states)


def goal_scenes(recipe, per_task: int) -> tuple[dict[str, Tensor], Tensor]:
    """`task_scenes` for every task, rendered by the recipe's collection workers (spawned: MuJoCo's GL context does
    not survive a fork) before training starts, when the cores are free: many more goals than the demonstrations
    show, for the head alone."""
    tasks = resolve_tasks(recipe.tasks)
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(recipe.collect.num_workers, len(tasks)))
    # One torch thread per worker: they share the cores (as `smolvla.sim.rollout`'s workers do).
    with ProcessPoolExecutor(workers, context, torch.set_num_threads, (1,)) as pool:
        parts = list(pool.map(task_scenes, [recipe] * len(tasks), tasks, [per_task] * len(tasks)))
    frames = {camera: torch.cat([part[0][camera] for part in parts]) for camera in recipe.collect.cameras}
    states = torch.cat([part[1] for part in parts])
    print(f"[aux] {len(states)} goal scenes rendered", flush=True)
    return frames, states


class AuxGoalHooks(TrainHooks):
    """Plain imitation plus a head on the camera tokens that regresses the chosen `environment_state` parts."""

    def __init__(
        self,
        targets: list[str],
        weight: float,
        hidden: int = 128,
        render_scenes: Callable | None = None,
        scene_batch_size: int | None = None,
        compile_loss: bool = False,
    ):
        self.targets_named, self.weight, self.hidden = targets, weight, hidden
        self.scene_batch_size = scene_batch_size  # goal scenes per micro-batch (None: as many as its samples)
        self.compile_loss = compile_loss
        # `goal_scenes(...)`, called when training starts: a run that only re-reports renders none.
        self.render_scenes, self.scenes = render_scenes, None
        self.draw = torch.Generator().manual_seed(SCENE_SEED)  # which scenes each micro-batch gets
        self.head: nn.Module | None = None
        self.mean = self.std = None  # of the targets over the training data: the head answers in their units
        self.features: Tensor | None = None  # this micro-batch's camera tokens (cameras * B, tokens, width)
        self.target: Tensor | None = None
        self.micro_batches, self.recent = 0, 0.0  # the aux loss summed since the last print (on the device)

    def pick(self, state: Tensor) -> Tensor:
        return torch.cat([state[..., TARGETS[t]] for t in self.targets_named], dim=-1)

    def build_head(self, policy) -> nn.Module:
        """An MLP from all cameras' tokens, flattened (where a token sits is where the marker is), to the targets."""
        with torch.no_grad():
            width, height = policy.config.resize_imgs_with_padding
            probe = policy.model.vlm_with_expert.embed_images(torch.zeros(1, 3, height, width, device=policy.device))
        inputs = len(policy.config.image_features) * probe.shape[1] * probe.shape[2]
        outputs = 3 * len(self.targets_named)
        self.head = nn.Sequential(nn.Linear(inputs, self.hidden), nn.GELU(), nn.Linear(self.hidden, outputs))
        return self.head.to(policy.device)

    def load_head(self, policy, path: Path) -> dict:
        """The head `train_and_keep_head` saved at `path`, built for `policy` and loaded with its units (`mean` and
        `std`); returns the saved dict (`record`'s: also what it answers)."""
        saved = torch.load(path)
        self.build_head(policy).load_state_dict(saved["head"])
        self.head.eval()
        self.mean, self.std = saved["mean"], saved["std"]
        return saved

    def scene_batch(self, config, size: int, device) -> tuple[Tensor, Tensor]:
        """`size` goal scenes as the prefix embeds them (cameras stacked camera-major, in [-1, 1]) and their targets
        in the head's units."""
        frames, states = self.scenes
        pick = torch.randint(len(states), (size,), generator=self.draw)
        cameras = {key: frames[key.removeprefix(IMAGE_PREFIX)][pick].float() / 255 for key in config.image_features}
        images, _ = prepare_images(cameras, config, size, device)
        return torch.cat(images), (self.pick(states[pick]).to(device) - self.mean) / self.std

    def tokens(self, features: Tensor, cameras: int) -> Tensor:
        """(cameras * B, tokens, width), camera-major as the prefix embeds them → (B, cameras * tokens * width)."""
        return features.unflatten(0, (cameras, -1)).transpose(0, 1).flatten(1).float()

    def init_policy(self, policy, args, data, device):
        if ENV_STATE not in data.stats:
            raise ConfigError(f"pilot_aux_goal needs {ENV_STATE} (Meta-World's 39-D state) in every dataset")
        stats = data.stats[ENV_STATE]
        self.mean = self.pick(torch.as_tensor(stats["mean"], dtype=torch.float32))
        self.std = self.pick(torch.as_tensor(stats["std"], dtype=torch.float32)).clamp(min=1e-2)
        return super().init_policy(policy, args, data, device)

    def attach(self, policy, config) -> None:
        model, vlm = policy.model, policy.model.vlm_with_expert
        cameras = len(policy.config.image_features)
        self.build_head(policy)
        self.mean, self.std = self.mean.to(policy.device), self.std.to(policy.device)
        self.scenes = self.render_scenes() if self.render_scenes else None
        embed, losses = vlm.embed_images, model.losses
        scene_embed = embed
        if self.compile_loss:
            # The policy's loss and the scenes' tower pass compiled, the head's bookkeeping around them eager (the
            # trainer's own compile would trace that too: a recompile per micro-batch count). Traced at the first
            # call, so the loss sees every patch made by then (`feed_state`'s too).
            losses, scene_embed = torch.compile(losses), torch.compile(embed)

        def embed_images(pixels: Tensor) -> Tensor:
            out = embed(pixels)
            if model.training:
                self.features = out
            return out

        def aux_losses(prefix, actions, noise, time):
            out = losses(prefix, actions, noise, time)
            if model.training and self.features is not None and self.target is not None:
                aux = (self.head(self.tokens(self.features, cameras)) - self.target).pow(2).mean(-1)
                if self.scenes is not None:
                    size = self.scene_batch_size or len(aux)
                    pixels, target = self.scene_batch(policy.config, size, aux.device)
                    aux = aux + (self.head(self.tokens(scene_embed(pixels), cameras)) - target).pow(2).mean()
                self.micro_batches, self.recent = self.micro_batches + 1, self.recent + aux.detach().mean()
                if self.micro_batches % PRINT_EVERY == 0:  # the only host sync the head adds
                    print(
                        f"[aux] micro-batch {self.micro_batches}: loss {float(self.recent) / PRINT_EVERY:.4f}",
                        flush=True,
                    )
                    self.recent = 0.0
                # The same amount on every action element of a sample: the loss's mean gains weight * mean(aux).
                out = {**out, "losses_raw": out["losses_raw"] + self.weight * aux[:, None, None].to(out["losses_raw"])}
            self.features = None
            return out

        vlm.embed_images, model.losses = embed_images, aux_losses

    def targets(self, raw, batch, noise, time, index):
        self.target = (self.pick(raw[ENV_STATE].float()).to(self.mean.device) - self.mean) / self.std
        return batch, noise, time

    def extend_optimizer(self, make):
        """`make_optimizer` with the head's parameters as a second group (before the scheduler is built on it)."""

        def make_optimizer(policy):
            optimizer = make(policy)
            optimizer.add_param_group({"params": list(self.head.parameters())})
            return optimizer

        return make_optimizer

    def record(self) -> dict:
        """What `aux_head.pt` keeps: the head, its units and what it answers."""
        return {"head": self.head.state_dict(), "mean": self.mean, "std": self.std, "targets": self.targets_named}

    def train_and_keep_head(self, train):
        """`train` with these hooks, then the head and its units beside the run's checkpoints."""

        def run(config, **kwargs):
            result = train(config, hooks=self, **kwargs)
            path = Path(config.output_dir) / HEAD
            torch.save(self.record(), path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)  # whole or absent
            return result

        return run


@torch.no_grad()
def goal_error(policy_dir: Path, head_file: Path, hooks: AuxGoalHooks, recipe, starts: int) -> dict[str, dict]:
    """How far (cm, RMS over starts of the xyz distance) the trained head puts each task's goal at its first
    `starts` evaluation starts (which no demonstration showed), against always answering the training mean and
    against always answering the mean of this task's goals at these starts: the best a goal-blind answer that knows
    the task can do (in a multi-task run the training mean is far from every task's goals). The head's other
    targets (the object) are scored the same way, under their name (`object_head_cm`, ...), at the first step."""
    agent = SmolVLAAgent.from_pretrained(policy_dir)
    saved = hooks.load_head(agent.policy, head_file)
    errors: dict[str, dict] = {}
    for task in resolve_tasks(recipe.tasks):
        env = MetaWorldEnv(bench_metaworld.env_config(recipe, task))
        answers, truths = [], []
        for start in range(starts):
            observation, _ = env.reset(seed=episode_seed(recipe.eval.seed, task, start))  # the evaluation's
            prefix = agent.policy.prepare_observation(agent.prepare({**observation, "task": task}))
            features = agent.policy.model.vlm_with_expert.embed_images(torch.cat(prefix.images))
            answers.append(hooks.head(hooks.tokens(features, len(agent.cameras)))[0] * saved["std"] + saved["mean"])
            truths.append(hooks.pick(torch.as_tensor(observation["environment_state"], dtype=torch.float32)))
        env.close()
        # (starts, targets, xyz) and (targets, xyz)
        answers, truths = torch.stack(answers).unflatten(-1, (-1, 3)), torch.stack(truths).unflatten(-1, (-1, 3))
        means = saved["mean"].unflatten(-1, (-1, 3))
        errors[task] = {}
        for i, target in enumerate(hooks.targets_named):
            truth = truths[:, i]
            misses = {"head_cm": answers[:, i] - truth, "training_mean_cm": means[i] - truth,
                      "task_mean_cm": truth.mean(0) - truth}  # fmt: skip
            name = "" if target == "goal" else f"{target}_"
            errors[task] |= {name + k: round(float(e.pow(2).sum(-1).mean().sqrt()) * 100, 2) for k, e in misses.items()}
        print(f"[aux] {task}: head errors {errors[task]} at {starts} evaluation starts", flush=True)
    return errors


def main(make_hooks: Callable[..., AuxGoalHooks] = AuxGoalHooks, parser=None, notes: dict | None = None) -> None:
    """The pilot's command line; a pilot built on this one passes its hooks' class (called as `AuxGoalHooks` is),
    its parser with its own flags added, and its notes for the JSON."""
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a bench_metaworld recipe with compile_model false")
    parser.add_argument("--targets", default="goal,object", help=f"comma-separated, of {sorted(TARGETS)}")
    parser.add_argument("--weight", type=float, default=1.0, help="the auxiliary loss's weight")
    parser.add_argument("--starts", type=int, default=20, help="evaluation starts per task for the goal error")
    parser.add_argument("--goal_scenes", type=int, default=0, help="fresh starts per task the head also learns from")
    parser.add_argument("--scene_batch", type=int, default=0, help="goal scenes per micro-batch (0: the batch size)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss and the scenes' tower pass")
    parser.add_argument("--swap", action="store_true", help="evaluate bench_language_swap's matrix (tasks in pairs)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_metaworld.exit_on_sigterm()
    targets = args.targets.split(",")
    if (
        "goal" not in targets
        or any(t not in TARGETS for t in targets)
        or not args.weight > 0
        or args.goal_scenes < 0
        or args.scene_batch < 0
    ):
        sys.exit(
            f"{parser.prog}: --targets must include goal and name only {sorted(TARGETS)}; --weight must be > 0; "
            "--goal_scenes and --scene_batch must be >= 0"
        )
    recipe = bench_metaworld.Recipe.load(args.config)
    if args.swap:
        try:
            bench_language_swap.pairs_of(resolve_tasks(recipe.tasks))
        except ConfigError as error:
            sys.exit(f"{parser.prog}: {error}")
    if recipe.train.get("policy", {}).get("compile_model"):
        sys.exit(f"{parser.prog}: {args.config} must not set compile_model (use --compile: it leaves the head eager)")
    render = (lambda: goal_scenes(recipe, args.goal_scenes)) if args.goal_scenes else None
    try:
        hooks = make_hooks(
            targets,
            args.weight,
            render_scenes=render,
            scene_batch_size=args.scene_batch or None,
            compile_loss=args.compile,
        )
    except ConfigError as error:
        sys.exit(f"{parser.prog}: {error}")
    trainer.make_optimizer = hooks.extend_optimizer(trainer.make_optimizer)
    trainer.train = hooks.train_and_keep_head(trainer.train)
    try:
        policy = bench_metaworld.run(recipe, stop_after="train")["policy"]
    except ConfigError as error:
        sys.exit(f"{parser.prog}: {error}")
    errors = goal_error(policy, Path(recipe.output_dir) / "train" / HEAD, hooks, recipe, args.starts)
    notes = {"aux_targets": targets, "aux_weight": args.weight, "goal_scenes": args.goal_scenes,
             "scene_batch": args.scene_batch or recipe.train.get("batch_size"), "compiled": args.compile,
             "goal_error": errors,
             **(notes or {})}  # fmt: skip
    if args.swap:
        bench_language_swap.run(recipe, notes)
    else:
        bench_metaworld.run(recipe, notes=notes)


if __name__ == "__main__":
    main()
