"""Deterministic evaluation: per-task success rate and return over N episodes per task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mtrl_famo.envs.builder import MultiTaskEnv
from mtrl_famo.envs.step import normalise_step

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvalResult:
    """Per-task figures, row i = task i."""

    task_names: list[str]
    success_rate: np.ndarray
    mean_return: np.ndarray

    @property
    def mean_success_rate(self) -> float:
        return float(self.success_rate.mean())


def evaluate(policy: Policy, env: MultiTaskEnv, num_episodes: int) -> EvalResult:
    """Run `num_episodes` full episodes per task with `policy` (obs [K, obs_dim] -> actions).

    Episode success is success at ANY step of the episode (the mtrl/Metaworld convention).
    Rows may finish episodes at different steps; each row counts its first `num_episodes`.
    """
    k = env.num_tasks
    obs = env.reset()
    episodes = np.zeros(k, dtype=np.int64)
    success_sum = np.zeros(k)
    return_sum = np.zeros(k)
    episode_success = np.zeros(k, dtype=bool)
    episode_return = np.zeros(k)
    while episodes.min() < num_episodes:
        step = normalise_step(*env.vector.step(policy(obs)))
        episode_success |= step.success > 0
        episode_return += step.reward
        counted = step.done & (episodes < num_episodes)
        success_sum[counted] += episode_success[counted]
        return_sum[counted] += episode_return[counted]
        episodes += step.done
        episode_success[step.done] = False
        episode_return[step.done] = 0.0
        obs = step.obs
    return EvalResult(
        task_names=list(env.task_names),
        success_rate=success_sum / num_episodes,
        mean_return=return_sum / num_episodes,
    )
