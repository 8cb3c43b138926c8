"""Build a Metaworld 3.x multitask vector env: one sub-env per task, row i = task i."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from mtrl_famo.envs.step import VectorStep, normalise_step
from mtrl_famo.envs.workers import WorkerVectorEnv

# Metaworld's own multitask benchmarks: env=<name> builds `Meta-World/<NAME>` with its task list and order.
METAWORLD_BENCHMARKS = ("mt10", "mt25", "mt50")
BENCHMARKS = (*METAWORLD_BENCHMARKS, "mt1", "custom")
# Every Metaworld v3 task observes 39 numbers (plus the task one-hot when one_hot) and acts in 4.
METAWORLD_OBS_DIM = 39
METAWORLD_ACTION_DIM = 4
# sync: every sub-env in this process; async: gymnasium's AsyncVectorEnv, one process per task;
# workers: `env.workers` processes, each stepping a contiguous group of tasks (envs/workers.py).
VECTOR_STRATEGIES = ("sync", "async", "workers")  # keys of VECTORIZERS (below)
# random: each reset draws one of the task's 50 goals (Metaworld's default).
# fixed: one goal per task, drawn once from the seed and kept (the published mtrl runs).
GOALS = ("random", "fixed")
REWARD_VERSIONS = ("v2", "v1")  # Metaworld 3 ships both reward functions
# none: raw rewards. running_std: per task, reward / sqrt(running variance) (see envs/reward_scale.py).
REWARD_NORMALIZATIONS = ("none", "running_std")


def known_task_names() -> list[str]:
    """All Metaworld v3 task names, in the benchmark's MT50 order."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS.keys())


def benchmark_task_names(name: str) -> list[str]:
    """Task names of a Metaworld benchmark (one of METAWORLD_BENCHMARKS) in sub-env order: the class
    table Metaworld's own benchmark builds from (`metaworld.env_dict.MT10_V3`, `MT25_V3`, `MT50_V3`)."""
    from metaworld import env_dict

    return list(getattr(env_dict, f"{name.upper()}_V3").keys())


@dataclass(frozen=True)
class EnvSpec:
    """What to build. `tasks` is only read for `mt1` (one task) and `custom` (a list).

    No defaults here: those of a run live in configs/env/*.yaml (`mtrl_famo.config.compose`).
    """

    name: str
    one_hot: bool
    vector_strategy: str
    workers: int | Literal["auto"]  # processes of vector_strategy=workers: a count, or auto (see `worker_count`)
    max_episode_steps: int
    goals: str
    reward_version: str
    reward_normalization: str
    tasks: tuple[str, ...] = ()  # no default of a run: configs/env/*.yaml set it; the benchmarks ignore it

    def task_names(self) -> list[str]:
        if self.name in METAWORLD_BENCHMARKS:
            return benchmark_task_names(self.name)
        return list(self.tasks)

    def dims(self) -> tuple[int, int]:
        """(obs_dim, action_dim) of the vector env `build_env` builds from this spec, without building it."""
        return METAWORLD_OBS_DIM + (len(self.task_names()) if self.one_hot else 0), METAWORLD_ACTION_DIM

    def validate(self) -> None:
        """Raise ValueError (one sentence) for anything Metaworld would reject later."""
        if self.name not in BENCHMARKS:
            raise ValueError(f"Unknown env '{self.name}'; choose one of {', '.join(BENCHMARKS)}.")
        if self.vector_strategy not in VECTOR_STRATEGIES:
            raise ValueError(
                f"Unknown env.vector_strategy '{self.vector_strategy}'; choose one of {', '.join(VECTOR_STRATEGIES)}."
            )
        if self.workers != "auto" and (
            not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1
        ):
            raise ValueError(f"env.workers={self.workers} is invalid; choose auto or a positive integer.")
        for key, value, choices in (
            ("goals", self.goals, GOALS),
            ("reward_version", self.reward_version, REWARD_VERSIONS),
            ("reward_normalization", self.reward_normalization, REWARD_NORMALIZATIONS),
        ):
            if value not in choices:
                raise ValueError(f"Unknown env.{key} '{value}'; choose one of {', '.join(choices)}.")
        if not 1 <= self.max_episode_steps <= 500:
            raise ValueError(
                f"env.max_episode_steps={self.max_episode_steps} is out of range; Metaworld "
                "episodes last between 1 and 500 steps."
            )
        if self.name in ("mt1", "custom"):
            known = known_task_names()
            if self.name == "mt1" and len(self.tasks) != 1:
                raise ValueError(f"env=mt1 needs exactly one task in env.task, got {list(self.tasks)}.")
            if self.name == "custom" and not self.tasks:
                raise ValueError("env=custom needs a non-empty env.tasks list, e.g. env.tasks=[reach-v3,push-v3].")
            for task in self.tasks:
                if task not in known:
                    raise ValueError(f"Unknown Metaworld task '{task}'; choose from {', '.join(known)}.")
            if len(set(self.tasks)) != len(self.tasks):
                raise ValueError(f"env.tasks lists a task twice: {list(self.tasks)}; each task must appear once.")


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


def sub_env_factories(spec: EnvSpec, seed: int, common: dict[str, Any]) -> list[Callable[[], gym.Env]]:
    """One factory per task, row order, building exactly the sub-envs `build_env` builds.

    MT10/MT25/MT50: what Metaworld's registered `Meta-World/MT10|MT25|MT50` does (`metaworld.make_mt_envs`):
    one benchmark object seeded once with `seed` draws every task's 50 goals (so each task's goals
    depend on the tasks before it), and every sub-env gets that same `seed`. Single tasks and custom
    lists: `make_mt_envs` per task with `seed + index`, as `Meta-World/custom-mt-envs` (but seed 0 stays 0).
    """
    import metaworld

    names = spec.task_names()
    if spec.name in METAWORLD_BENCHMARKS:
        benchmark = getattr(metaworld, spec.name.upper())(seed=seed)
        return [
            partial(
                metaworld._init_each_env,
                env_cls=env_cls,
                tasks=[task for task in benchmark.train_tasks if task.env_name == name],
                seed=seed,
                env_id=index,
                num_tasks=len(names),
                **common,
            )
            for index, (name, env_cls) in enumerate(benchmark.train_classes.items())
        ]
    return [
        partial(metaworld.make_mt_envs, task, num_tasks=len(names), env_id=index, seed=seed + index, **common)
        for index, task in enumerate(names)
    ]


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
# env.vector_strategy -> how the vector env is built (same sub-envs and seeds for all three).
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
    custom lists use the same per-task factory (`metaworld.make_mt_envs`) that the registered
    `Meta-World/custom-mt-envs` uses, built here because that entry point turns seed 0 into
    "unseeded" (`seed=None if not seed else seed + idx`), which would break reproducibility.
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
