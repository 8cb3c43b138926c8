"""What a script attaches to `Trainer.train` instead of patching the trainer.

A callback sees the trainer after every vector step and may ask the loop to stop. Benchmarks time
a window of steps and stop at once; the learning check stops at a wall-clock budget the way an
interrupted run stops, so that the run can be continued later.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtrl_famo.trainer import Trainer


class Stop(enum.Enum):
    """How a callback ends the training loop."""

    NOW = "now"  # leave at once: no final evaluation, no checkpoint, no summary.json (a benchmark's window is over)
    AT_RESUME_POINT = "at_resume_point"  # at the next exact resume point: evaluate, checkpoint, write the summary


class Callback:
    """Base class: override `on_step_end`; returning None lets training go on."""

    def on_step_end(self, trainer: Trainer) -> Stop | None:
        """Called after every vector step (its updates included) with the trainer."""
        return None


class WallClockLimit(Callback):
    """End the run like an interrupted one at the first exact resume point after `seconds` of wall
    clock from the first step: with a final evaluation and a checkpoint, so it can be continued."""

    def __init__(self, seconds: float):
        if not seconds > 0:
            raise ValueError(f"A wall-clock limit must be a positive number of seconds, got {seconds}.")
        self.seconds = seconds
        self._deadline: float | None = None

    def on_step_end(self, trainer: Trainer) -> Stop | None:
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.seconds
        return Stop.AT_RESUME_POINT if now >= self._deadline else None
