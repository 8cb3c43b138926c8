"""Test-only hook: hold a training run at a chosen step until a signal reaches it.

Loaded by the interpreter at start-up (`sitecustomize`) when a test puts this folder on
PYTHONPATH and sets MTRL_FAMO_TEST_PAUSE_AT=<env step>. The run then stops right after that
step, writes MTRL_FAMO_TEST_PAUSE_MARKER (its pid), and waits until one of the signals the
preemption guard catches has been handled (or until it is killed). So the TEST, not the
scheduler, decides where an interrupted run stops. Only the first attempt pauses: once the
marker exists (a resumed or re-queued attempt), the hook does nothing.
"""

from __future__ import annotations

import os
import time

PAUSE_AT = os.environ.get("MTRL_FAMO_TEST_PAUSE_AT")
MARKER = os.environ.get("MTRL_FAMO_TEST_PAUSE_MARKER")
WAIT_S = 300.0


def _install() -> None:
    from mtrl_famo import preemption, trainer

    pause_at = int(PAUSE_AT)
    caught: list[int] = []
    original_flag = preemption.PreemptionGuard._flag
    original_step = trainer.Trainer.step

    def flag(self, signum, frame):  # noqa: ANN001 - same signature as the handler it wraps
        original_flag(self, signum, frame)
        caught.append(signum)

    def step(self) -> None:
        original_step(self)
        if self.env_step != pause_at or MARKER is None or os.path.exists(MARKER):
            return
        with open(MARKER, "w") as handle:
            handle.write(str(os.getpid()))
        deadline = time.monotonic() + WAIT_S
        while not caught:
            if time.monotonic() > deadline:
                raise RuntimeError(f"test hook: no signal arrived within {WAIT_S} s of pausing at step {pause_at}")
            time.sleep(0.01)

    preemption.PreemptionGuard._flag = flag
    trainer.Trainer.step = step


if PAUSE_AT is not None:
    _install()
