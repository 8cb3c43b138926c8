"""vector_strategy=workers: the same trajectories as sync, bit for bit, for any number of workers.

The reference is a SyncVectorEnv of the same sub-envs (for MT10: Metaworld's registered
`Meta-World/MT10`), run on the same actions through episode ends: obs, rewards, flags, the full
info dicts (final obs, final info, success and their masks) and the sub-envs' RNG checkpoints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from mtrl_famo.envs import EnvSpec, build_env, goal_cache
from mtrl_famo.envs.builder import metaworld_benchmark, sub_env_factories, worker_count
from mtrl_famo.envs.evaluation import evaluate_metaworld
from mtrl_famo.envs.workers import EnvWorkerError, WorkerVectorEnv, split_rows

TASKS = ("reach-v3", "push-v3", "pick-place-v3")
HORIZON = 3
SEED = 5


def spec(strategy: str, workers: int | str = 1, *, name: str = "custom", tasks=TASKS, horizon=HORIZON) -> EnvSpec:
    return EnvSpec(
        name=name,
        tasks=tasks,
        one_hot=True,
        vector_strategy=strategy,
        workers=workers,
        max_episode_steps=horizon,
        goals="random",
        reward_version="v2",
        reward_normalization="none",
    )


def record(vector, num_tasks: int, steps: int, horizon: int) -> list:
    """Raw gymnasium outputs of `steps` seeded random steps, with the RNG checkpoints taken before
    each episode end (as the collector takes them)."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(steps):
        checkpoint = vector.call("get_checkpoint") if (t + 1) % horizon == 0 else None
        out.append((vector.step(rng.uniform(-1, 1, (num_tasks, 4)).astype(np.float32)), checkpoint))
    return out


def assert_same(a, b, where: str = "") -> None:
    """Equal values, dtypes, dict key order; RecordEpisodeStatistics' wall-clock `episode.t` aside."""
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            if not (where.endswith("episode") and key == "t"):
                assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        if a.dtype == object:
            for i, (x, y) in enumerate(zip(a, b)):
                assert_same(x, y, f"{where}[{i}]")
        else:
            np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def sync_reference():
    env = build_env(spec("sync"), SEED)
    reset_state = env.rng_state()
    yield env, record(env.vector, len(TASKS), 3 * HORIZON - 1, HORIZON), reset_state
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_step_like_sync_through_episode_ends(sync_reference, workers: int) -> None:
    sync, expected, _ = sync_reference
    if workers == 2:  # through build_env and the config's EnvSpec
        env = build_env(spec("workers", workers), SEED)
        vector = env.vector
    else:  # the same factories, straight into the worker env (saves rebuilding the goals)
        vector = WorkerVectorEnv(sub_env_factories(spec("workers"), SEED, FACTORY_KWARGS), workers)
        vector.reset(seed=SEED)
    try:
        assert [len(rows) for rows in vector.groups] == [len(rows) for rows in split_rows(len(TASKS), workers)]
        assert vector.single_observation_space == sync.vector.single_observation_space
        assert vector.num_envs == len(TASKS)
        got = record(vector, len(TASKS), 3 * HORIZON - 1, HORIZON)
        assert any("final_obs" in step[4] for step, _ in got)  # episode ends are covered
        assert_same(got, expected, f"W={workers}")
    finally:
        vector.close()
    assert all(process.exitcode is not None for process in vector._processes)  # joined: no zombies


FACTORY_KWARGS = dict(use_one_hot=True, max_episode_steps=HORIZON, reward_function_version="v2", task_select="random")


@pytest.mark.slow
def test_rng_checkpoint_round_trip_matches_sync(sync_reference) -> None:
    """load_checkpoint with the per-row list, then a reset: the same obs and steps as sync."""
    sync, _, reset_state = sync_reference
    env = build_env(spec("workers", 2), SEED)
    try:
        assert env.rng_state() == reset_state
        for e in (sync, env):
            e.restore_rng_state(reset_state)
        assert_same(env.vector.reset(), sync.vector.reset(), "reset")
        assert_same(record(env.vector, 3, HORIZON + 1, HORIZON), record(sync.vector, 3, HORIZON + 1, HORIZON))
        # MultiTaskEnv's split step is the same step.
        action = np.zeros((3, 4), dtype=np.float32)
        env.step_async(action)
        sync.step_async(action)
        a, b = env.step_wait(), sync.step_wait()
        for field in ("obs", "next_obs", "reward", "terminated", "truncated", "success"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    finally:
        env.close()
        env.close()  # idempotent


@pytest.mark.slow
def test_mt10_workers_match_metaworlds_registered_env() -> None:
    """MT10's sub-envs (goals drawn by one seeded benchmark, every sub-env seeded alike) are those of
    `gymnasium.make_vec("Meta-World/MT10")`, split over 3 workers (groups of 4, 3, 3); also when their
    goals are read back from the disk cache (mtrl_famo.envs.goal_cache), as a later process reads them."""
    sync = build_env(spec("sync", name="mt10", horizon=2), SEED)
    try:
        expected = record(sync.vector, 10, 3, 2)
        for source in ("this process's draw", "the disk cache"):
            workers = build_env(spec("workers", 3, name="mt10", horizon=2), SEED)
            try:
                assert workers.task_names == sync.task_names and len(sync.task_names) == 10
                assert_same(record(workers.vector, 10, 3, 2), expected, f"mt10 from {source}")
            finally:
                workers.close()
            assert goal_cache.cache_path("mt10", SEED).is_file()  # kept for later processes
            metaworld_benchmark.cache_clear()  # from here on, as in a new process
    finally:
        sync.close()


@pytest.mark.slow
def test_metaworld_evaluation_runs_on_workers() -> None:
    """eval.protocol=metaworld (get_attr, toggles, final_info's episode returns) gives sync's result."""
    two = spec("sync", tasks=TASKS[:2])

    def policy(obs: np.ndarray) -> np.ndarray:
        return np.tanh(obs[:, :4] * 3.0).astype(np.float32)

    results = []
    for strategy in ("sync", "workers"):
        env = build_env(replace(two, vector_strategy=strategy, workers=2), SEED, every_goal_in_turn=True)
        try:
            results.append(evaluate_metaworld(policy, env, 2))
        finally:
            env.close()
    np.testing.assert_array_equal(results[0].success_rate, results[1].success_rate)
    np.testing.assert_array_equal(results[0].mean_return, results[1].mean_return)


@pytest.mark.slow
def test_worker_failure_is_one_clear_error_and_closes_everything() -> None:
    factories = sub_env_factories(spec("workers", tasks=TASKS[:2]), SEED, FACTORY_KWARGS)
    vector = WorkerVectorEnv(factories, 2)
    with pytest.raises(EnvWorkerError, match=r"Env worker 0 \(sub-envs 0\.\.0\) failed with AttributeError"):
        vector.call("no_such_method")
    assert vector.closed and all(not process.is_alive() for process in vector._processes)
    vector.close()  # idempotent after a failure

    vector = WorkerVectorEnv(factories, 2)
    vector.reset(seed=SEED)
    os.kill(vector._processes[0].pid, signal.SIGTERM)  # a cluster's stop signal is the trainer's to handle
    vector.step(np.zeros((2, 4), dtype=np.float32))
    os.kill(vector._processes[1].pid, signal.SIGKILL)
    with pytest.raises(EnvWorkerError, match=r"Env worker 1 \(sub-envs 1\.\.1\) died \(exit code -9\)"):
        vector.step(np.zeros((2, 4), dtype=np.float32))
    assert vector.closed and all(process.exitcode is not None for process in vector._processes)


UNCLOSED_ENV_SCRIPT = textwrap.dedent(
    """
    from mtrl_famo.envs.builder import sub_env_factories
    from mtrl_famo.envs.workers import WorkerVectorEnv
    from test_env_workers import FACTORY_KWARGS, SEED, TASKS, spec

    vector = WorkerVectorEnv(sub_env_factories(spec("workers", tasks=TASKS[:2]), SEED, FACTORY_KWARGS), 2)
    vector.reset(seed=SEED)
    print(" ".join(str(process.pid) for process in vector._processes), flush=True)
    # exits without vector.close(): the workers ignore SIGTERM, multiprocessing's exit handler sends it
    """
)


@pytest.mark.slow
def test_an_unclosed_worker_env_does_not_hang_the_interpreter_at_exit() -> None:
    """A script that forgets env.close() still exits (it used to wait forever for its workers, which
    ignore the SIGTERM that multiprocessing's exit handler sends), and leaves no worker behind."""
    result = subprocess.run(
        [sys.executable, "-c", UNCLOSED_ENV_SCRIPT],
        cwd=os.path.dirname(__file__),
        capture_output=True,
        text=True,
    )  # no deadline here: the hang it checks for would be ended (and failed) by pytest-timeout
    assert result.returncode == 0, result.stderr[-3000:]
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2
    for pid in pids:  # reaped by the script before it exited: no orphan is left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_worker_count_rule_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert worker_count("auto", 10) == 1  # a 2-core laptop: one core for the learner, one worker
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert (worker_count("auto", 10), worker_count("auto", 50), worker_count(4, 10), worker_count(20, 10)) == (
        10,
        15,
        4,
        10,
    )
    assert split_rows(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]
    for bad in (0, -2):
        with pytest.raises(ValueError, match=rf"env.workers={bad} is invalid; choose auto or a positive integer"):
            spec("workers", bad).validate()
    for bad, shown in (("many", "'many'"), (True, "True")):  # not an int at all: the config's type check
        with pytest.raises(ValueError, match=rf"env.workers={shown} is invalid; it must be an integer or auto"):
            spec("workers", bad).validate()
