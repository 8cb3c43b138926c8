"""Test-only hooks, loaded by the interpreter at start-up (`sitecustomize`) when a test puts this
folder on PYTHONPATH. Each is switched on by its own environment variable; without them nothing
happens.

MTRL_FAMO_TEST_PAUSE_AT=<env step> (with MTRL_FAMO_TEST_PAUSE_MARKER=<path>): hold a training run
right after that step, write the marker (the pid), and wait until one of the signals the
preemption guard catches has been handled (or the process is killed). So the TEST, not the
scheduler, decides where an interrupted run stops. Only the first attempt pauses: once the
marker exists (a resumed or re-queued attempt), the hook does nothing. The wait has no deadline (a
loaded machine may take long to send the signal): it ends when the signal has been handled, or, if the
process that started this one (the test; Slurm's step for a job) goes away first, with an error.

MTRL_FAMO_TEST_SCRIPTED_SUCCESS=1: tiny test runs never succeed, so every success rate they log is
0 and a report that mixed up final, best and per-task values would still match them. This hook
replaces each evaluated success rate by a value in {0, 0.5, 1} derived from the same evaluation's
real mean return, so the values differ between steps, tasks and seeds yet stay a deterministic
function of the run (identical in an interrupted-and-resumed run).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import time
from collections.abc import Callable


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `install` right after module `name` has first been executed. Every Python process started
    with this folder on its path loads this file, including the short probes that libraries run in
    subprocesses of their own (MuJoCo's GL probe): patching at start-up would import mtrl_famo and torch
    into each of them (1-2 s of CPU apiece), patching on import only where the module is used."""

    def __init__(self, name: str, install: Callable[[], None]):
        self.name = name
        self.install = install

    def find_spec(self, fullname, path, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; the other finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module) -> None:
            execute(module)
            self.install()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _install_pause(pause_at: int, marker: str | None, parent: int) -> None:
    from mtrl_famo import preemption, trainer

    caught: list[int] = []
    original_flag = preemption.PreemptionGuard._flag
    original_step = trainer.Trainer.step

    def flag(self, signum, frame):
        original_flag(self, signum, frame)
        caught.append(signum)

    def step(self) -> None:
        original_step(self)
        if self.env_step != pause_at or marker is None or os.path.exists(marker):
            return
        with open(marker, "w") as handle:
            handle.write(str(os.getpid()))
        while not caught:
            if os.getppid() != parent:  # re-parented: nobody is left to send the signal
                raise RuntimeError("test hook: the process that started this run exited during its pause")
            time.sleep(0.01)

    preemption.PreemptionGuard._flag = flag
    trainer.Trainer.step = step


def _install_scripted_success() -> None:
    import numpy as np

    from mtrl_famo.evaluator import Evaluator

    original_run = Evaluator.run

    def run(self):
        result = original_run(self)  # also `self.last`: changed in place below
        result.success_rate = np.floor(np.abs(result.mean_return) * 7.0) % 3 / 2.0
        return result

    Evaluator.run = run


if os.environ.get("MTRL_FAMO_TEST_PAUSE_AT") is not None:
    _pause_at, _marker = int(os.environ["MTRL_FAMO_TEST_PAUSE_AT"]), os.environ.get("MTRL_FAMO_TEST_PAUSE_MARKER")
    _parent = os.getppid()  # at start-up: a parent gone before the pause is seen too
    sys.meta_path.insert(0, _AfterImport("mtrl_famo.trainer", lambda: _install_pause(_pause_at, _marker, _parent)))
if os.environ.get("MTRL_FAMO_TEST_SCRIPTED_SUCCESS") == "1":
    sys.meta_path.insert(0, _AfterImport("mtrl_famo.evaluator", _install_scripted_success))
