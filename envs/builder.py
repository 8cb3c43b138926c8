"""Build a Metaworld 3.x multitask vector env: one sub-env per task, row i = task i."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np

from mtrl_famo.config import (
    BENCHMARKS,
    GOALS,
    METAWORLD_ACTION_DIM,
    METAWORLD_BENCHMARKS,
    METAWORLD_OBS_DIM,
    REWARD_NORMALIZATIONS,
    REWARD_VERSIONS,
    VECTOR_STRATEGIES,
    EnvSpec,
    benchmark_task_names,
    known_task_names,
)
from mtrl_famo.envs.goal_cache import load_or_draw
from mtrl_famo.envs.step import VectorStep, normalise_step
from mtrl_famo.envs.workers import WorkerVectorEnv

# The env section of the config (EnvSpec) and its choices live in mtrl_famo.config, which imports no
# gymnasium; they are re-exported here for the code that builds envs.
__all__ = [
    "BENCHMARKS",
    "GOALS",
    "METAWORLD_ACTION_DIM",
    "METAWORLD_BENCHMARKS",
    "METAWORLD_OBS_DIM",
    "REWARD_NORMALIZATIONS",
    "REWARD_VERSIONS",
    "VECTORIZERS",
    "VECTOR_STRATEGIES",
    "EnvSpec",
    "MultiTaskEnv",
    "benchmark_task_names",
    "build_env",
    "known_task_names",
    "metaworld_benchmark",
    "sub_env_factories",
    "worker_count",
]


def worker_count(workers: int | str, num_tasks: int) -> int:
    """Worker processes for `env.workers`: at most one per task; `auto` takes the cores this process
    may use but one, kept for the learner (and at least one): min(K, max(1, cores - 1))."""
    if workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = max(1, cores - 1)
    return min(num_tasks, int(workers))


@dataclass
class MultiTaskEnv:
    """A vector env whose row i is task `task_names[i]`."""

    vector: gym.vector.VectorEnv
    task_names: list[str]
    max_episode_steps: int
    _pending_actions: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def obs_dim(self) -> int:
        return int(self.vector.single_observation_space.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.vector.single_action_space.shape[0])

    def reset(self) -> np.ndarray:
        obs, _ = self.vector.reset()
        return np.asarray(obs, dtype=np.float32)

    def step(self, actions: np.ndarray) -> VectorStep:
        """One step of every sub-env (row i = task i), normalised (final obs, success, flags)."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        """Start a step and return: worker processes step while the caller works (`step_wait` ends
        it). A vector env without a split step (sync) just keeps the actions for `step_wait`."""
        start = getattr(self.vector, "step_async", None)
        if start is None:
            self._pending_actions = actions
        else:
            start(actions)

    def step_wait(self) -> VectorStep:
        """The step `step_async` started, normalised like `step`."""
        actions = self._pending_actions
        if actions is not None:
            self._pending_actions = None
            return normalise_step(*self.vector.step(actions))
        return normalise_step(*self.vector.step_wait())

    def rng_state(self) -> list[Any]:
        """Every sub-env's random state (goal choice at reset); with `restore_rng_state` and a
        reset, it reproduces the episodes that follow. Simulator states are not included: they are
        only needed mid-episode, and runs are checkpointed at episode ends."""
        return list(self.vector.call("get_checkpoint"))

    def restore_rng_state(self, state: list[Any]) -> None:
        self.vector.call("load_checkpoint", list(state))

    def close(self) -> None:
        self.vector.close()


@functools.lru_cache(maxsize=128)  # a 50-task list under two seeds; MT50 is under 1 MB
def metaworld_benchmark(name: str, seed: int) -> Any:
    """Metaworld's benchmark object of MT10/MT25/MT50 (`name` "mt10", ...) or of one task (`metaworld.MT1`),
    seeded with `seed`: its class table and every task's 50 goals.

    Drawing the goals builds and resets each task's env 50 times, about 0.7 s of CPU per task, and its
    result is a function of (name, seed) alone (Metaworld seeds NumPy's global generator for the draw
    and restores it after), so it is drawn once per machine (`mtrl_famo.envs.goal_cache`, on disk) and
    held once per process: the training env, the evaluation env and the runs of one process (a Hydra
    multirun) share it. Its tasks are immutable named tuples; callers hand each sub-env its own list,
    which Metaworld's pseudorandom wrapper shuffles in place.
    """
    import metaworld

    if name in METAWORLD_BENCHMARKS:
        return load_or_draw(name, seed, benchmark_task_names(name), lambda: getattr(metaworld, name.upper())(seed=seed))
    return load_or_draw(name, seed, [name], lambda: metaworld.MT1(name, seed=seed))


def _sub_env(*, tasks: Sequence[Any], **kwargs: Any) -> gym.Env:
    """Metaworld's `_init_each_env` with a list of `tasks` of its own: the pseudorandom goal wrapper
    shuffles its list in place, and a factory may be called more than once."""
    import metaworld

    return metaworld._init_each_env(tasks=list(tasks), **kwargs)


def sub_env_factories(spec: EnvSpec, seed: int, common: dict[str, Any]) -> list[Callable[[], gym.Env]]:
    """One factory per task, row order, building exactly the sub-envs `build_env` builds.

    MT10/MT25/MT50: what Metaworld's registered `Meta-World/MT10|MT25|MT50` does (`metaworld.make_mt_envs`):
    one benchmark object seeded once with `seed` draws every task's 50 goals (so each task's goals
    depend on the tasks before it), and every sub-env gets that same `seed`. Single tasks and custom
    lists: what `make_mt_envs` does for one task name, per task with `seed + index` (an `MT1` benchmark
    of that seed and `_init_each_env`), as `Meta-World/custom-mt-envs` (but seed 0 stays 0). The
    benchmarks come from `metaworld_benchmark` (drawn once per machine, held once per process).
    """
    names = spec.task_names()
    if spec.name in METAWORLD_BENCHMARKS:
        benchmark = metaworld_benchmark(spec.name, seed)
        return [
            partial(
                _sub_env,
                env_cls=env_cls,
                tasks=tuple(task for task in benchmark.train_tasks if task.env_name == name),
                seed=seed,
                env_id=index,
                num_tasks=len(names),
                **common,
            )
            for index, (name, env_cls) in enumerate(benchmark.train_classes.items())
        ]
    factories = []
    for index, task in enumerate(names):
        benchmark = metaworld_benchmark(task, seed + index)
        factories.append(
            partial(
                _sub_env,
                env_cls=benchmark.train_classes[task],
                tasks=tuple(benchmark.train_tasks),
                seed=seed + index,
                env_id=index,
                num_tasks=len(names),
                **common,
            )
        )
    return factories


def _gymnasium_vector(vector_cls: type[gym.vector.VectorEnv], strategy: str) -> Vectorizer:
    """sync/async: MT10/MT25/MT50 through Metaworld's registered vector envs, other task lists through
    gymnasium's own vector class over `sub_env_factories`."""

    def build(spec: EnvSpec, seed: int, common: dict[str, Any]) -> gym.vector.VectorEnv:
        if spec.name in METAWORLD_BENCHMARKS:
            return gym.make_vec(f"Meta-World/{spec.name.upper()}", vector_strategy=strategy, seed=seed, **common)
        factories = sub_env_factories(spec, seed, common)
        return vector_cls(factories, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    return build


def _worker_vector(spec: EnvSpec, seed: int, common: dict[str, Any]) -> gym.vector.VectorEnv:
    factories = sub_env_factories(spec, seed, common)
    return WorkerVectorEnv(factories, worker_count(spec.workers, len(factories)))


Vectorizer = Callable[[EnvSpec, int, dict[str, Any]], gym.vector.VectorEnv]
# env.vector_strategy -> how the vector env is built (same sub-envs and seeds for all three); its keys
# are exactly mtrl_famo.config.VECTOR_STRATEGIES (tests/test_config_schema.py checks it).
VECTORIZERS: dict[str, Vectorizer] = {
    "sync": _gymnasium_vector(gym.vector.SyncVectorEnv, "sync"),
    "async": _gymnasium_vector(gym.vector.AsyncVectorEnv, "async"),
    "workers": _worker_vector,
}


def build_env(spec: EnvSpec, seed: int, *, every_goal_in_turn: bool = False) -> MultiTaskEnv:
    """Build the vector env. The 50 goals of each task are fixed by `seed`.

    `spec.goals`: `random` draws one of them at every reset; `fixed` draws one per task at the
    first (seeded) reset and keeps it, so a training and an evaluation env built with the same
    seed share each task's goal. `every_goal_in_turn` (evaluation under Metaworld's protocol,
    random goals only) visits the 50 goals in a seeded shuffled order, one per episode.

    MT10/MT25/MT50 use Metaworld's registered `Meta-World/MT10|MT25|MT50` vector envs. Single tasks and
    custom lists build what the per-task factory (`metaworld.make_mt_envs`) of the registered
    `Meta-World/custom-mt-envs` builds (`sub_env_factories`), here because that entry point turns seed
    0 into "unseeded" (`seed=None if not seed else seed + idx`), which would break reproducibility.
    """
    spec.validate()
    names = spec.task_names()
    common = dict(
        use_one_hot=spec.one_hot,
        max_episode_steps=spec.max_episode_steps,
        reward_function_version=spec.reward_version,
        task_select="pseudorandom" if every_goal_in_turn and spec.goals == "random" else "random",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vector = VECTORIZERS[spec.vector_strategy](spec, seed, common)
    if common["task_select"] == "pseudorandom":  # Metaworld's pseudorandom wrapper only cycles when asked to
        vector.call("toggle_sample_tasks_on_reset", True)
    vector.reset(seed=seed)
    if spec.goals == "fixed":  # keep the goal the seeded reset just drew, in every later reset
        vector.call("toggle_sample_tasks_on_reset", False)
    return MultiTaskEnv(vector=vector, task_names=names, max_episode_steps=spec.max_episode_steps)
