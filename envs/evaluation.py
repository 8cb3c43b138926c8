"""Deterministic evaluation: per-task success rate and return over N episodes per task.

Two protocols (`eval.protocol`), each a function `(policy, env, num_episodes) -> EvalResult` and the
way its env is built, registered in PROTOCOLS:

- any_success: N full-length episodes per task, success = success at ANY step (mtrl's rule).
- metaworld: Metaworld 3's own `metaworld.evaluation.evaluation()` (the Meta-World+ protocol: an
  episode stops at its first success). Its env visits each task's 50 goals in a seeded shuffled
  order, and every evaluation starts a fresh shuffle, so 50 episodes = each goal exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mtrl_famo.envs.builder import MultiTaskEnv
from mtrl_famo.envs.episodes import EpisodeTracker

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


@dataclass
class MetaworldAgent:
    """What `metaworld.evaluation.evaluation()` asks of an agent, for a stateless policy."""

    policy: Policy

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self.policy(np.asarray(observations, dtype=np.float32))

    def reset(self, env_mask: np.ndarray) -> None:
        """Nothing to forget between episodes: the policy keeps no state."""


def restart_goal_cycle(env: MultiTaskEnv) -> None:
    """Make the next reset of every sub-env that cycles through its goals (Metaworld's pseudorandom
    task selection) start a fresh seeded shuffle of them, so the next N episodes visit N distinct
    goals (all 50 for N = 50). Metaworld's `evaluation()` would otherwise carry on where the last
    one stopped, across the end of a shuffle, and visit some goals twice and others never.

    Only the cycle position changes (to its initial -1); the shuffle itself draws from the env's
    RNG, so it stays a function of the seed and of what `MultiTaskEnv.rng_state` checkpoints.
    """
    states = env.rng_state()  # (sub-env id, wrapper checkpoint) per row
    if not any("current_task_idx" in state for _, state in states):
        return  # random task selection (env.goals=fixed, or not built for this protocol): no cycle
    env.restore_rng_state([(env_id, {**state, "current_task_idx": -1}) for env_id, state in states])


def evaluate_metaworld(policy: Policy, env: MultiTaskEnv, num_episodes: int) -> EvalResult:
    """Metaworld 3's own `evaluation()` on `env`, mapped back to row order.

    `env` must come from `build_env(..., every_goal_in_turn=True)` (one goal per episode, in turn).
    """
    from metaworld.evaluation import evaluation

    restart_goal_cycle(env)
    _, _, success_per_task, returns_per_task = evaluation(MetaworldAgent(policy), env.vector, num_episodes)
    missing = [name for name in env.task_names if name not in success_per_task]
    if missing:
        raise RuntimeError(
            f"Metaworld's evaluation() reported no result for {missing}; got {sorted(success_per_task)}."
        )
    return EvalResult(
        task_names=list(env.task_names),
        success_rate=np.array([success_per_task[name] for name in env.task_names], dtype=np.float64),
        mean_return=np.array([np.mean(returns_per_task[name]) for name in env.task_names], dtype=np.float64),
    )


@dataclass(frozen=True)
class EvalProtocol:
    """How one `eval.protocol` evaluates, and how its env must be built (`build_env`'s keyword)."""

    evaluate: Callable[[Policy, MultiTaskEnv, int], EvalResult]
    every_goal_in_turn: bool


# `eval.protocol` -> how it evaluates; the keys are exactly mtrl_famo.config.EVAL_PROTOCOLS, the choices'
# one home (tests/test_config_schema.py checks it).
PROTOCOLS: dict[str, EvalProtocol] = {
    # N full-length episodes per task, success = success at any step (mtrl's rule).
    "any_success": EvalProtocol(evaluate, every_goal_in_turn=False),
    # Metaworld 3's own evaluation() (Meta-World+): stops an episode at its first success.
    "metaworld": EvalProtocol(evaluate_metaworld, every_goal_in_turn=True),
}
