"""Deterministic evaluation: per-task success rate and return over N episodes per task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mtrl_famo.envs.builder import MultiTaskEnv
from mtrl_famo.envs.episodes import EpisodeTracker

Policy = Callable[[np.ndarray], np.ndarray]

# any_success: N full-length episodes per task, success = success at any step (mtrl's rule).
# metaworld: Metaworld 3's own `metaworld.evaluation.evaluation()` (Meta-World+).
EVAL_PROTOCOLS = ("any_success", "metaworld")


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

    Episodes are scored by `EpisodeTracker` (success at ANY step, summed return). Rows may finish
    episodes at different steps; each row counts its first `num_episodes`.
    """
    k = env.num_tasks
    obs = env.reset()
    tracker = EpisodeTracker(k)
    episodes = np.zeros(k, dtype=np.int64)
    success_sum = np.zeros(k)
    return_sum = np.zeros(k)
    while episodes.min() < num_episodes:
        step = env.step(policy(obs))
        finished = tracker.record(step.reward, step.success, step.done)
        counted = finished.mask & (episodes < num_episodes)
        success_sum[counted] += finished.success[counted]
        return_sum[counted] += finished.returns[counted]
        episodes += finished.mask
        obs = step.obs
    return EvalResult(
        task_names=list(env.task_names),
        success_rate=success_sum / num_episodes,
        mean_return=return_sum / num_episodes,
    )
