"""Meta-World success of a training run's checkpoints (`smolvla train --eval_freq=N --env.task=...`).

The trainer saves checkpoint N and hands its `pretrained_model/` here: it is loaded as any user would load it (the
saved EMA weights, processors and cameras), rolled out on `--eval.n_episodes` starts per task (the evaluation seeds,
disjoint from the demonstrations'), in `--eval.num_workers` simulator processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smolvla.errors import ConfigError
from smolvla.eval.agent import AgentFactory, SmolVLAAgent
from smolvla.eval.evaluate import env_for, run_evaluation
from smolvla.keys import EMPTY_CAMERA_PREFIX, IMAGE_PREFIX
from smolvla.sim.metaworld_env import MetaWorldConfig, MetaWorldEnv, SimError
from smolvla.sim.tasks import resolve_tasks


@dataclass
class MetaWorldEvaluator:
    tasks: list[str]
    n_episodes: int
    num_workers: int = 1
    seed: int = 1000
    max_steps: int | None = None
    device: str = "cpu"
    rename_map: tuple[tuple[str, str], ...] = ()  # the run's dataset → policy names (to name the env's cameras)

    @classmethod
    def from_config(cls, config) -> MetaWorldEvaluator:
        """From a `smolvla train` config (`env`, `eval`, `policy.device`, `rename_map`); duck-typed, so evaluation
        does not import training."""
        device = config.policy.device or "cpu"
        return cls(resolve_tasks(config.env.task), config.eval.n_episodes, config.eval.num_workers, config.eval.seed,
                   config.env.max_steps, device, tuple(config.rename_map.items()))  # fmt: skip

    def check(self, policy) -> None:
        """The simulator renders every camera the policy reads (under the dataset's names)."""
        to_dataset = {policy_key: key for key, policy_key in self.rename_map}
        cameras = tuple(
            to_dataset.get(key, key).removeprefix(IMAGE_PREFIX)
            for key in policy.config.image_features
            if not key.startswith(EMPTY_CAMERA_PREFIX)
        )
        try:
            MetaWorldEnv(MetaWorldConfig(task=self.tasks[0], cameras=cameras, image_size=32)).close()
        except SimError as e:
            raise ConfigError(f"--eval_freq on {self.tasks[0]}: the policy reads cameras {list(cameras)}; {e}") from e

    def __call__(self, pretrained_model: Path, step: int) -> dict[str, float]:
        agent = SmolVLAAgent.from_pretrained(pretrained_model, self.device)
        env = env_for(agent, MetaWorldConfig(task=self.tasks[0]))
        if self.max_steps is not None:
            env.max_steps = self.max_steps
        target = AgentFactory(str(pretrained_model), self.device) if self.num_workers > 1 else agent
        summary, _ = run_evaluation(target, env, self.tasks, self.n_episodes, self.seed, self.num_workers)
        row = {
            "eval/success": summary["overall"]["success_rate"],
            "eval/mean_length": summary["overall"]["mean_length"],
        }
        for task, result in summary["per_task"].items():
            row[f"eval_task/{task}"] = result["success_rate"]
        return row
