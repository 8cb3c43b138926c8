"""Catch the cluster's "you are about to be stopped" signals and turn them into a checkpoint.

Slurm (through submitit's `--signal=USR2@<delay>`) sends SIGUSR2 before a time limit or a
preemption, and SIGTERM when a job is cancelled or re-queued (`scontrol requeue`). A signal
handler must not write a checkpoint itself: it may fire in the middle of an update. So the
handler only raises a flag; the training loop saves at its next exact-resume point and then
hands the signal over to whoever handled it before us (submitit's handler re-queues the job and
exits; without submitit the default action of the signal ends the process).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

CAUGHT_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class PreemptionGuard:
    """Install with `with PreemptionGuard() as guard:`; poll `guard.pending`, then `guard.hand_over()`."""

    def __init__(self, signals: tuple[signal.Signals, ...] = CAUGHT_SIGNALS):
        self.signals = signals
        self.pending: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._flag)
            except ValueError:  # not the main thread: signals cannot be caught here
                break
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _flag(self, signum: int, frame: FrameType | None) -> None:
        self.pending = signal.Signals(signum)

    def hand_over(self) -> None:
        """Give the pending signal to the handler that was installed before ours.

        After the checkpoint is safely on disk: submitit's SIGUSR2 handler re-queues the job and
        exits; the default action terminates (as SystemExit, so that files are closed on the way
        out). SIGTERM always ends the run once handed over: submitit merely logs it, but under
        Slurm it announces a kill (`scancel`, `scontrol requeue`, preemption), and training past
        the checkpoint would only be thrown away.
        """
        signum, self.pending = self.pending, None
        if signum is None:
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(int(signum), None)
        if previous == signal.SIG_DFL or (callable(previous) and signum == signal.SIGTERM):
            sys.exit(128 + int(signum))
        # SIG_IGN, or a handler that returned: the signal asked for no stop, so training goes on.
