"""Goal-in-state pilot: the goal head's answer, read from the cameras, becomes part of the state the expert reads.

    .venv/bin/python benchmarks/pilot_goal_state.py --config benchmarks/configs/metaworld_pilots/goal_state.yaml \
        --goal_scenes 2000

Two earlier pilots disagree in an instructive way. Told the goal in its state (pilot_oracle), the tiny policy solves
reach (90 %); taught to locate the goal in the pixels (pilot_aux_goal with goal scenes), its tower does (5 cm off
unseen reach goals, 0.7 cm off push's at MT10 scale) yet the policy does not act on it (reach 47.5 %, push 30 %):
the goal sits in the camera tokens, not where the action expert looks for it. Here the head's answer goes where the
oracle's goal went: into the state, in the three padded slots after the robot's own (`max_state_dim` is 32, so the
state projection already has them: no new parameter, the checkpoint keeps LeRobot's shape). Training and evaluation
alike, and nothing privileged at evaluation (cameras + 4-D state in, as in every recipe): the goal is estimated.
The answer is detached, so the head learns from its own loss only, not from the expert's. `--feed goal,object` also
writes the head's object answer (the puck, the peg) into the three slots after the goal's; `--relative` writes each
fed position minus the hand's (decimetres) instead, the same numbers for a handle 3 cm below the hand at any height;
`--hide_hand z` also blanks the hand's own height in the state (its normalized mean, 0), so how far to descend can be
read only from the handle, not from the height its demonstrations' handles happened to sit at.

The checkpoint cannot act without its head (`aux_head.pt`, beside the run's checkpoints): a benchmark device, not a
recipe for users. Evaluation (its worker processes too) builds agents through `GoalFedFactory`, which attaches it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import pilot_aux_goal
from benchmarks.pilot_aux_goal import HEAD, AuxGoalHooks
from smolvla.errors import ConfigError
from smolvla.eval import agent as agent_module
from smolvla.eval import evaluate as evaluate_module
from smolvla.keys import STATE_KEY
from smolvla.model.checkpoint import pretrained_dir

RELATIVE_UNIT = 0.1  # metres: hand-relative positions fed in decimetres, about the state's normalized scale
AXES = "xyz"  # the state's first three slots: the hand's position


class GoalStateHooks(AuxGoalHooks):
    """`AuxGoalHooks` whose head's answers for `feed` (the goal, by default) are also written into the state, at
    training and evaluation."""

    def __init__(
        self,
        targets: list[str],
        weight: float,
        feed: tuple[str, ...] = ("goal",),
        relative: bool = False,
        hide_hand: str = "",
        **kwargs,
    ):
        super().__init__(targets, weight, **kwargs)
        if not feed or any(name not in targets for name in feed):
            raise ConfigError(f"--feed {','.join(feed)}: the head answers only {targets}")
        if any(axis not in AXES for axis in hide_hand) or len(set(hide_hand)) != len(hide_hand):
            raise ConfigError(f"--hide_hand {hide_hand}: expected distinct axes among x, y, z (e.g. z)")
        if hide_hand and not relative:
            raise ConfigError(f"--hide_hand {hide_hand} needs --relative: else nothing fed says where the hand is")
        self.feed, self.relative, self.hide_hand = list(feed), relative, hide_hand
        # Where each fed answer sits in the head's output (3 per target, in `targets`' order).
        self.columns = torch.tensor([3 * targets.index(name) + i for name in feed for i in range(3)])
        self.hand_mean = self.hand_std = None  # the state's xyz statistics: to read the hand in metres (relative)

    def init_policy(self, policy, args, data, device):
        stats = data.stats[STATE_KEY]
        self.hand_mean, self.hand_std = (torch.as_tensor(stats[k], dtype=torch.float32)[:3] for k in ("mean", "std"))
        return super().init_policy(policy, args, data, device)

    def load_head(self, policy, path: Path) -> dict:
        saved = super().load_head(policy, path)
        self.hand_mean, self.hand_std = saved.get("hand_mean"), saved.get("hand_std")  # heads before --relative: none
        return saved

    def record(self) -> dict:
        return {**super().record(), "feed": self.feed, "relative": self.relative, "hide_hand": self.hide_hand,
                "hand_mean": self.hand_mean, "hand_std": self.hand_std}  # fmt: skip

    def fed(self, answer: Tensor, state: Tensor) -> Tensor:
        """What goes into the state slots: the head's answers as they are (in their normalized units), or with
        `relative` each position minus the hand's, in decimetres. A pull then sees "the handle 3 cm below the hand"
        whatever the height, the same numbers its demonstrations showed, instead of an absolute height outside
        them (a handle higher than any the pull was shown)."""
        if not self.relative:
            return answer
        columns = self.columns.to(answer.device)
        position = answer * self.std[columns].to(answer) + self.mean[columns].to(answer)
        hand = state[:, :3] * self.hand_std.to(state) + self.hand_mean.to(state)  # Normalize's inverse
        return ((position.unflatten(-1, (-1, 3)) - hand[:, None]) / RELATIVE_UNIT).flatten(1)

    def attach(self, policy, config) -> None:
        super().attach(policy, config)
        self.feed_state(policy)

    def feed_state(self, policy) -> None:
        """From now on `policy`'s state projection reads, in the state's slots from `state_dim` on, the head's
        answers for `feed` (normalized by the training data's statistics, as the state is by its own) for the camera
        tokens of the same prefix."""
        model, vlm = policy.model, policy.model.vlm_with_expert
        cameras, slot, width = len(policy.config.image_features), policy.config.state_dim, len(self.columns)
        if slot is None or slot + width > policy.config.max_state_dim:
            raise ConfigError(f"--feed {','.join(self.feed)} needs {width} free state slots after the state's {slot} "
                              f"(max_state_dim {policy.config.max_state_dim})")  # fmt: skip
        columns = self.columns.to(policy.device)
        hidden = torch.tensor([AXES.index(axis) for axis in self.hide_hand], dtype=torch.long, device=policy.device)
        embed, project = vlm.embed_images, model.state_proj.forward
        seen: dict[str, Tensor] = {}

        def embed_images(pixels: Tensor) -> Tensor:
            seen["tokens"] = out = embed(pixels)
            return out

        def state_proj(state: Tensor) -> Tensor:
            tokens = seen.pop("tokens")  # embed_prefix embeds the cameras (in one batch) before the state
            answer = self.fed(self.head(self.tokens(tokens, cameras))[:, columns].detach().to(state), state)
            robot = state[:, :slot].index_fill(1, hidden, 0.0)  # after `fed`, which reads the hand's position
            return project(torch.cat([robot, answer, state[:, slot + width :]], dim=-1))

        vlm.embed_images, model.state_proj.forward = embed_images, state_proj


@dataclass(frozen=True)
class GoalFedFactory(agent_module.AgentFactory):
    """`AgentFactory` whose checkpoint agents read their head's answers (those the run fed: the head file's `feed`),
    as `GoalStateHooks` trained them (picklable: evaluation workers build their agents through it too)."""

    def __call__(self):
        agent = super().__call__()
        if self.path in agent_module.BUILTIN_AGENTS:
            return agent
        head = pretrained_dir(self.path).parents[2] / HEAD  # beside <run>/checkpoints/<step>/pretrained_model
        if not head.is_file():
            raise ConfigError(f"{head} is missing: a policy trained by pilot_goal_state cannot act without its head")
        saved = torch.load(head)
        # Heads saved before --feed / --relative / --hide_hand answer the goal, as it is, beside the whole state.
        hooks = GoalStateHooks(
            saved["targets"],
            1.0,
            feed=saved.get("feed", ["goal"]),
            relative=bool(saved.get("relative")),
            hide_hand=saved.get("hide_hand", ""),
        )
        hooks.load_head(agent.policy, head)
        hooks.feed_state(agent.policy)
        return agent


def main() -> None:
    # Evaluation (its workers and the failure video) builds agents through the factory that attaches the head.
    evaluate_module.AgentFactory = agent_module.AgentFactory = GoalFedFactory
    own = argparse.ArgumentParser(add_help=False)  # read first: the hooks are built with it
    own.add_argument("--feed", default="goal", help="comma-separated head targets written into the state")
    own.add_argument("--relative", action="store_true", help="feed each position minus the hand's (decimetres)")
    own.add_argument("--hide_hand", default="", help="hand axes (of xyz) blanked in the state; needs --relative")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[own])
    known = own.parse_known_args()[0]
    feed = tuple(known.feed.split(","))
    notes = {"goal_in_state": "head", "feed": feed, **({"relative": True} if known.relative else {}),
             **({"hide_hand": known.hide_hand} if known.hide_hand else {})}  # fmt: skip
    hooks = partial(GoalStateHooks, feed=feed, relative=known.relative, hide_hand=known.hide_hand)
    pilot_aux_goal.main(hooks, parser, notes=notes)


if __name__ == "__main__":
    main()
