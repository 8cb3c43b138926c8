"""Evaluation in a worker process of its own, so that training goes on while a policy is evaluated.

At an evaluation step the trainer hands over a snapshot of the actor (a CPU copy of its state_dict
taken at that step) and trains on; the worker runs the very `Evaluator` that blocking evaluation
runs, on its own eval env built from the same EnvSpec, seed and protocol, so the result equals a
blocking evaluation of the same snapshot (the worker computes on CPU with one thread: a policy
trained on a GPU may differ there in the last bits of its actions).

Why a `spawn`ed process: `fork` would copy a process whose torch (OpenMP) and TensorBoard threads may
hold locks, and can deadlock; `forkserver` costs the same interpreter start for a single worker.
The worker starts at the first evaluation, builds its eval env with the training env's vector
strategy (with `workers`, its own `env.workers` env processes: the K tasks' episodes run in parallel,
which is what the 50 episodes per task of eval.protocol=metaworld need), ignores the cluster's stop
signals (the trainer decides what they mean, and needs the worker's env RNG for its checkpoint) and
dies with the trainer. As with any spawned process, a script that trains must start under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from mtrl_famo.config import VideoConfig
from mtrl_famo.envs import EnvSpec, EvalResult
from mtrl_famo.envs.evaluation import PROTOCOLS
from mtrl_famo.evaluator import Evaluator
from mtrl_famo.video import Video

CONTEXT = "spawn"
# Slurm and the terminal signal every process of a job; the trainer alone decides what they mean.
TRAINER_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
CLOSE_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class BackgroundEvalError(RuntimeError):
    """The evaluation worker raised an exception or died; the message says which."""


def snapshot(actor: nn.Module) -> dict[str, np.ndarray]:
    """A CPU copy of the actor's weights as they are now (numpy arrays: pickled by value)."""
    return {name: tensor.detach().to("cpu", copy=True).numpy() for name, tensor in actor.state_dict().items()}


class BackgroundEvaluator:
    """`Evaluator`'s interface (`submit`, `wait`, `collect`, `last`, checkpoint state), evaluating in a
    worker process while training goes on.

    At most one evaluation is in flight: `submit` first waits for the previous one, so an evaluation
    that takes longer than `eval.every` steps of training slows training down to its pace rather
    than queueing snapshots. `state_dict` (a checkpoint) waits too, then asks the worker for its eval
    env's RNG state, so a resumed run evaluates exactly what an uninterrupted one would. (A stop
    signal that arrives during an evaluation thus waits for it, as blocking evaluation would.)
    """

    def __init__(
        self,
        spec: EnvSpec,
        seed: int,
        episodes: int,
        actor: nn.Module,
        *,
        protocol: str,
        video: VideoConfig | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown eval.protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}.")
        self.spec, self.seed, self.episodes, self.protocol = spec, seed, episodes, protocol
        self.video = video  # the worker renders and encodes the videos (`Evaluator.record`)
        self._videos: list[tuple[int, dict[str, Video]]] = []
        self.actor = actor
        self.last: EvalResult | None = None
        self._in_flight: int | None = None  # the step of the evaluation the worker is running
        self._finished: list[tuple[int, EvalResult]] = []
        self._pending_rng: Any = None  # a checkpoint's eval env RNG, for a worker not started yet
        self._error: BackgroundEvalError | None = None
        self._closed = False
        self._process: multiprocessing.process.BaseProcess | None = None
        self._commands: Any = None  # the worker's command queue (its feeder thread never blocks us)
        self._replies: Connection | None = None
        self._stop: multiprocessing.util.Finalize | None = None

    # ----- the trainer's interface ------------------------------------------------------------
    def submit(self, step: int, video: bool = False) -> None:
        """Start evaluating the actor as it is now, for `step` (after the previous evaluation ends),
        with `video` also recording it."""
        self.wait()
        self._started().put(("evaluate", (snapshot(self.actor), video)))
        self._in_flight = step

    def wait(self) -> None:
        """Block until no evaluation is in flight."""
        if self._in_flight is not None:
            self._finish(self._receive("result"))

    def collect(self, wait: bool = False) -> list[tuple[int, EvalResult]]:
        """The (step, result) of each evaluation finished since the last call, oldest first; never
        blocks unless `wait`."""
        if wait:
            self.wait()
        elif self._in_flight is not None and self._replies is not None and self._ready(timeout=0):
            self._finish(self._receive("result"))
        finished, self._finished = self._finished, []
        return finished

    def collect_videos(self) -> list[tuple[int, dict[str, Video]]]:
        """The (step, videos) of each recording that `collect` or `wait` has received, oldest first."""
        videos, self._videos = self._videos, []
        return videos

    def state_dict(self) -> dict[str, Any]:
        """`Evaluator.state_dict()`'s content, after the evaluation in flight has finished."""
        self.wait()
        if self._process is None:
            env_rng = self._pending_rng
        else:
            self._started().put(("rng_state", None))
            env_rng = self._receive("rng_state")
        return {"env_rng": env_rng, "last": None if self.last is None else dataclasses.asdict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait()
        if state["env_rng"] is not None:
            if self._process is None:
                self._pending_rng = state["env_rng"]
            else:
                self._started().put(("load_rng_state", state["env_rng"]))
        self.last = None if state["last"] is None else EvalResult(**state["last"])

    def close(self) -> None:
        """Stop the worker (at once if it is still evaluating) and reap it; safe to call again."""
        self._closed = True
        if self._in_flight is not None and self._process is not None and self._process.is_alive():
            self._process.kill()  # its result would only be thrown away
        self._in_flight = None
        if self._stop is not None:
            self._stop()

    # ----- the worker ---------------------------------------------------------------------------
    def _started(self) -> Any:
        """The worker's command queue, starting the worker first if needed."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise BackgroundEvalError("This background evaluator is closed; build a new one to evaluate again.")
        if self._process is None:
            context = multiprocessing.get_context(CONTEXT)
            commands = context.Queue()
            replies, worker_end = context.Pipe(duplex=False)
            process = context.Process(
                target=serve,
                args=(commands, worker_end, os.getpid(), *self._worker_settings()),
                name="mtrl_famo-eval",
                daemon=False,  # a daemonic process may not start the eval env's own worker processes
            )
            process.start()
            worker_end.close()  # the worker holds the only writing end: its death reads as end of file
            self._process, self._commands, self._replies = process, commands, replies
            # Runs at close(), when this object is collected, or at exit before multiprocessing joins
            # its children (priority >= 0), so a forgotten evaluator never hangs the interpreter.
            self._stop = multiprocessing.util.Finalize(self, stop, args=(process, commands, replies), exitpriority=100)
            commands.put(("actor", pickle.dumps(copy.deepcopy(self.actor).to("cpu"))))
            if self._pending_rng is not None:
                commands.put(("load_rng_state", self._pending_rng))
                self._pending_rng = None
        return self._commands

    def _worker_settings(self) -> tuple[EnvSpec, int, int, str, VideoConfig | None]:
        """`serve`'s arguments after the channels: what the worker's `Evaluator` is built from."""
        return self.spec, self.seed, self.episodes, self.protocol, self.video

    def _ready(self, timeout: float | None) -> bool:
        assert self._process is not None and self._replies is not None
        return bool(wait_ready([self._replies, self._process.sentinel], timeout))

    def _receive(self, expected: str) -> Any:
        """The worker's next reply, which must be `expected`; a failure becomes BackgroundEvalError."""
        if self._error is not None:
            raise self._error
        assert self._process is not None and self._replies is not None
        self._ready(timeout=None)
        try:
            kind, *payload = self._replies.recv() if self._replies.poll() else ("died",)
        except (EOFError, OSError):
            kind, payload = "died", []
        if kind == expected:
            return payload[0]
        self._in_flight = None
        if kind == "error":
            message, worker_traceback = payload
            self._error = BackgroundEvalError(f"The background evaluation failed in its worker process: {message}")
            self._error.add_note(f"The worker's traceback:\n{worker_traceback}")
        else:
            process = self._process
            self.close()  # reaps the worker first: its exit code is known only then (not None under load)
            self._error = BackgroundEvalError(
                f"The background evaluation worker (pid {process.pid}) died with exit code "
                f"{process.exitcode} before it replied (its own error, if any, is on stderr above); "
                "set eval.background=false to evaluate in the training process and see the error there."
            )
        self.close()
        raise self._error

    def _finish(self, reply: tuple[dict[str, Any], dict[str, Video]]) -> None:
        assert self._in_flight is not None
        result, videos = reply
        self.last = EvalResult(**result)
        self._finished.append((self._in_flight, self.last))
        if videos:
            self._videos.append((self._in_flight, videos))
        self._in_flight = None


def stop(process: multiprocessing.process.BaseProcess, commands: Any, replies: Connection) -> None:
    """Ask the worker to end (kill it if it does not), reap it and free the channels."""
    if process.is_alive():
        with contextlib.suppress(OSError, ValueError):  # a queue closed already
            commands.put(("close", None))
        process.join(CLOSE_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
    process.join()
    commands.cancel_join_thread()  # its pipe may be full of a snapshot nobody will read
    commands.close()
    replies.close()


# ----- inside the worker process --------------------------------------------------------------------
def die_with_parent(parent_pid: int) -> None:
    """Let the kernel kill this worker when the trainer dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the trainer died before prctl took effect
        os._exit(0)


def serve(
    commands: Any,
    replies: Connection,
    parent_pid: int,
    spec: EnvSpec,
    seed: int,
    episodes: int,
    protocol: str,
    video: VideoConfig | None,
) -> None:
    """The worker's loop: ("actor", pickled module), then any of ("evaluate", (snapshot, record a video?)),
    ("rng_state", None), ("load_rng_state", state), until ("close", None)."""
    die_with_parent(parent_pid)
    for signum in TRAINER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    torch.set_num_threads(1)
    holder = SimpleNamespace(actor=None)
    evaluator = Evaluator(spec, seed, episodes, holder, torch.device("cpu"), protocol=protocol, video=video)
    try:
        while True:
            command, payload = commands.get()
            if command == "actor":
                holder.actor = pickle.loads(payload)
            elif command == "evaluate":
                weights, record = payload
                holder.actor.load_state_dict({name: torch.from_numpy(array) for name, array in weights.items()})
                result = dataclasses.asdict(evaluator.run())
                replies.send(("result", (result, evaluator.record() if record else {})))
                if evaluator.recorder is not None:  # idle until the next command: build what recording keeps
                    evaluator.recorder.prepare(interrupted=lambda: not commands.empty())
            elif command == "rng_state":
                replies.send(("rng_state", evaluator.state_dict()["env_rng"]))
            elif command == "load_rng_state":
                evaluator.load_state_dict({"env_rng": payload, "last": None})
            else:
                return
    except Exception as error:
        message = " ".join(str(error).split())  # one line, however the exception formats itself
        replies.send(("error", f"{type(error).__name__}: {message}", traceback.format_exc()))
    finally:
        evaluator.close()
