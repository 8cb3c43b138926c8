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

import os
import time


def _install_pause(pause_at: int, marker: str | None) -> None:
    from mtrl_famo import preemption, trainer

    caught: list[int] = []
    parent = os.getppid()  # at start-up: a parent gone before the pause is seen too
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
    _install_pause(int(os.environ["MTRL_FAMO_TEST_PAUSE_AT"]), os.environ.get("MTRL_FAMO_TEST_PAUSE_MARKER"))
if os.environ.get("MTRL_FAMO_TEST_SCRIPTED_SUCCESS") == "1":
    _install_scripted_success()
