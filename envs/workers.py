"""A vector env whose sub-envs are stepped by a few worker processes, each holding a contiguous group.

Why: a SyncVectorEnv steps all K Metaworld simulators one after another on the learner's core,
and gymnasium's AsyncVectorEnv starts one process per task (50 for MT50, more than a laptop has
cores). `WorkerVectorEnv` splits the K sub-envs into W contiguous groups (row i = task i stays),
one process per group, and its split `step_async`/`step_wait` lets the learner update while the
workers step.

Exactness: each worker steps its sub-envs with SyncVectorEnv's SAME_STEP autoreset rule and sends
back every sub-env's own info dicts; the main process merges them in row order with gymnasium's
own `VectorEnv._add_info`, so obs, rewards, flags and infos (`final_obs`, `final_info`, `success`
and their `_key` masks) are those a SyncVectorEnv of the same K sub-envs returns, bit for bit.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import multiprocessing.util
import signal
import traceback
import warnings
from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

EnvFactory = Callable[[], gym.Env]
JOIN_TIMEOUT_S = 5.0
# Slurm and the terminal signal every process of a job; the trainer alone decides what they mean
# (checkpoint, then close the workers). A worker whose trainer is gone sees its pipe close and exits.
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class EnvWorkerError(RuntimeError):
    """A worker process failed or died; the vector env is closed and cannot be used any more."""


def split_rows(num_envs: int, num_workers: int) -> list[range]:
    """W contiguous, nearly equal groups of rows 0..K-1 (the first groups get the extra rows)."""
    sizes = [len(part) for part in np.array_split(np.arange(num_envs), num_workers)]
    starts = np.cumsum([0, *sizes])
    return [range(int(a), int(b)) for a, b in itertools.pairwise(starts)]


# ----- the worker process -------------------------------------------------------------------
def _step_envs(envs: list[gym.Env], actions: np.ndarray) -> tuple:
    """SyncVectorEnv's SAME_STEP step, kept per sub-env: (obs list, rewards, terminated,
    truncated, per-sub-env list of the info dicts to merge, in the order SyncVectorEnv merges them)."""
    observations, rewards, terminated, truncated, infos = [], [], [], [], []
    for env, action in zip(envs, actions):
        obs, reward, term, trunc, info = env.step(action)
        parts = []
        if term or trunc:
            parts.append({"final_obs": obs, "final_info": info})
            obs, info = env.reset()
        parts.append(info)
        observations.append(obs)
        rewards.append(reward)
        terminated.append(term)
        truncated.append(trunc)
        infos.append(parts)
    return observations, rewards, terminated, truncated, infos


def _call(envs: list[gym.Env], name: str, args: tuple, kwargs: dict) -> list[Any]:
    """SyncVectorEnv.call on this group: call the method, or read the attribute."""
    results = []
    for env in envs:
        function = env.get_wrapper_attr(name)
        results.append(function(*args, **kwargs) if callable(function) else function)
    return results


def _kill_and_reap(processes: Sequence[mp.process.BaseProcess], pipes: Sequence[Any]) -> None:
    """Kill the workers still alive (they ignore SIGTERM), reap every one, close the pipes. The
    finalizer of an env nobody closed: at its collection, or at interpreter exit BEFORE
    multiprocessing's own exit handler, which would SIGTERM them and wait for them forever."""
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join()
    for pipe in pipes:
        pipe.close()


def _worker(index: int, factories: Sequence[EnvFactory], pipe: Any, parent_pipe: Any) -> None:
    """Build the group's sub-envs, then serve commands until `close` (or the parent goes away)."""
    for signum in IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if parent_pipe is not None:
        parent_pipe.close()  # fork: this process's copy of the parent's end, so EOF is seen
    envs: list[gym.Env] = []
    try:
        with warnings.catch_warnings():  # as build_env does around building the sub-envs in process
            warnings.simplefilter("ignore")
            envs = [factory() for factory in factories]
        pipe.send(("ok", (envs[0].observation_space, envs[0].action_space)))
        while True:
            command, data = pipe.recv()
            if command == "step":
                pipe.send(("ok", _step_envs(envs, data)))
            elif command == "reset":
                seeds, options = data
                pipe.send(("ok", [env.reset(seed=seed, options=options) for env, seed in zip(envs, seeds)]))
            elif command == "call":
                pipe.send(("ok", _call(envs, *data)))
            elif command == "close":
                pipe.send(("ok", None))
                break
            else:
                raise ValueError(f"unknown command {command!r}")
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
    except Exception as error:  # reported to the main process as one error
        message = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
        with contextlib.suppress(BrokenPipeError, OSError):
            pipe.send(("error", message))
    finally:
        for env in envs:
            env.close()
        pipe.close()


# ----- the main-process side ------------------------------------------------------------------
class WorkerVectorEnv(gym.vector.VectorEnv):
    """K sub-envs stepped by `num_workers` processes in contiguous groups; SAME_STEP autoreset.

    Offers what the project and `metaworld.evaluation.evaluation()` use of a gymnasium VectorEnv:
    `reset`, `step` (= `step_async` + `step_wait`), `call`, `get_attr`, `num_envs`, the spaces
    and an idempotent `close`. A worker that fails or dies closes the whole env and raises one
    `EnvWorkerError` naming the worker and its rows.
    """

    def __init__(self, factories: Sequence[EnvFactory], num_workers: int, *, context: str | None = None):
        self.closed = True  # until there are processes to close
        if not 1 <= num_workers <= len(factories):
            raise ValueError(f"num_workers={num_workers} is invalid; choose 1..{len(factories)}.")
        self.num_envs = len(factories)
        self.groups = split_rows(self.num_envs, num_workers)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        self.render_mode = None
        self._waiting = False
        self._processes: list[mp.process.BaseProcess] = []
        self._pipes: list[Any] = []
        self.closed = False
        # An env nobody closes must neither hang the interpreter at exit nor leave workers behind.
        self._finalizer = mp.util.Finalize(self, _kill_and_reap, args=(self._processes, self._pipes), exitpriority=100)
        ctx = mp.get_context(context or ("fork" if "fork" in mp.get_all_start_methods() else "spawn"))
        forked = ctx.get_start_method() == "fork"
        try:
            for index, rows in enumerate(self.groups):
                parent, child = ctx.Pipe()
                process = ctx.Process(
                    target=_worker,
                    name=f"env-worker-{index}",
                    args=(index, [factories[row] for row in rows], child, parent if forked else None),
                    daemon=True,
                )
                process.start()
                child.close()
                self._processes.append(process)
                self._pipes.append(parent)
            spaces = self._receive_all()
        except BaseException:
            self.close(terminate=True)
            raise
        self.single_observation_space, self.single_action_space = spaces[0]
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._observations = create_empty_array(self.single_observation_space, self.num_envs, fn=np.zeros)

    # ----- protocol helpers ----------------------------------------------------------------
    def _send_all(self, messages: Sequence[tuple[str, Any]]) -> None:
        if self.closed:
            raise EnvWorkerError("The env workers are closed.")
        for index, (pipe, message) in enumerate(zip(self._pipes, messages)):
            try:
                pipe.send(message)
            except (BrokenPipeError, OSError):
                self._fail(index, "died")

    def _receive_all(self) -> list[Any]:
        """Every worker's reply, in worker order; on any failure: close all, raise one error."""
        replies, failure = [], None
        for index, pipe in enumerate(self._pipes):
            try:
                status, payload = pipe.recv()
            except (EOFError, OSError):
                failure = failure or (index, "died")
                continue
            if status != "ok":
                failure = failure or (index, f"failed with {payload}")
            replies.append(payload)
        if failure is not None:
            self._fail(*failure)
        return replies

    def _fail(self, index: int, what: str) -> None:
        """Close everything and raise one error. A worker that died is reaped first (its pipe's end
        of file means it is exiting; it is killed only if it has not ended after JOIN_TIMEOUT_S), so
        the exit code read below is its own, never None."""
        rows = self.groups[index]
        process = self._processes[index]
        died = what == "died"
        if died:
            process.join(JOIN_TIMEOUT_S)
        self.close(terminate=True)  # kills what is still alive and reaps every worker
        code = f" (exit code {process.exitcode})" if died else ""
        raise EnvWorkerError(
            f"Env worker {index} (sub-envs {rows.start}..{rows.stop - 1}) {what.rstrip()}{code}; "
            "the vector env is closed."
        )

    def _broadcast(self, command: str, data: Any) -> list[Any]:
        self._send_all([(command, data)] * len(self._pipes))
        return self._receive_all()

    # ----- VectorEnv API -------------------------------------------------------------------
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """Like SyncVectorEnv.reset: an int seed gives sub-env i the seed `seed + i`."""
        if self._waiting:
            raise EnvWorkerError("reset() was called while a step_async() is waiting for step_wait().")
        if seed is None or isinstance(seed, int):
            seed = [None if seed is None else seed + row for row in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"reset got {len(seed)} seeds for num_envs={self.num_envs}; give one per sub-env.")
        self._send_all([("reset", ([seed[row] for row in rows], options)) for rows in self.groups])
        results = [item for group in self._receive_all() for item in group]
        infos: dict[str, Any] = {}
        for row, (_, info) in enumerate(results):
            infos = self._add_info(infos, info, row)
        self._observations = concatenate(self.single_observation_space, [obs for obs, _ in results], self._observations)
        return deepcopy(self._observations), infos

    def step_async(self, actions: np.ndarray) -> None:
        """Send each worker its rows' actions and return at once; `step_wait` collects the step."""
        if self._waiting:
            raise EnvWorkerError("step_async() was called twice without step_wait() in between.")
        rows = list(iterate(self.action_space, actions))
        self._send_all([("step", rows[group.start : group.stop]) for group in self.groups])
        self._waiting = True

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The step `step_async` started, merged as a SyncVectorEnv of all K sub-envs returns it."""
        if not self._waiting:
            raise EnvWorkerError("step_wait() was called without a step_async() before it.")
        self._waiting = False
        replies = self._receive_all()
        observations, infos = [], {}
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=np.bool_)
        truncated = np.zeros(self.num_envs, dtype=np.bool_)
        for rows, (obs, reward, term, trunc, parts) in zip(self.groups, replies):
            observations.extend(obs)
            rewards[rows.start : rows.stop] = reward
            terminated[rows.start : rows.stop] = term
            truncated[rows.start : rows.stop] = trunc
            for offset, row_parts in enumerate(parts):
                for part in row_parts:
                    infos = self._add_info(infos, part, rows.start + offset)
        self._observations = concatenate(self.single_observation_space, observations, self._observations)
        return deepcopy(self._observations), rewards, terminated, truncated, infos

    def step(self, actions: np.ndarray):
        self.step_async(actions)
        return self.step_wait()

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Every sub-env's `name(*args, **kwargs)` (or attribute `name`), in row order."""
        if self._waiting:
            raise EnvWorkerError(f"call('{name}') was made while a step_async() is waiting for step_wait().")
        return tuple(item for group in self._broadcast("call", (name, args, kwargs)) for item in group)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    def close_extras(self, *, terminate: bool = False, **kwargs: Any) -> None:
        """Ask every worker to stop (or kill them at once with `terminate`); join all: no zombies."""
        if self._waiting and not terminate:
            for pipe in self._pipes:  # collect the pending step so the workers are listening again
                try:
                    if pipe.poll(JOIN_TIMEOUT_S):
                        pipe.recv()
                    else:
                        terminate = True
                except (EOFError, OSError):
                    terminate = True
            self._waiting = False
        for pipe, process in zip(self._pipes, self._processes):
            if terminate or not process.is_alive():
                continue
            try:
                pipe.send(("close", None))
                if pipe.poll(JOIN_TIMEOUT_S):
                    pipe.recv()
            except (EOFError, BrokenPipeError, OSError):
                pass
        if not terminate:
            for process in self._processes:
                process.join(timeout=JOIN_TIMEOUT_S)
        self._finalizer()  # SIGKILL to what is left (the workers ignore SIGTERM), reap all, close the pipes

    def close(self, **kwargs: Any) -> None:
        """Idempotent: a second call (or one after a worker failure) does nothing."""
        if self.closed:
            return
        self.close_extras(**kwargs)
        self.closed = True

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close(terminate=True)
