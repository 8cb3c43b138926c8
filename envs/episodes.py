"""What an episode scores: its success is success at ANY of its steps, its return the sum of its rewards.

The one home of that definition (mtrl's, the Metaworld maintainers' and the papers' convention),
used by training statistics and by evaluation alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FinishedEpisodes:
    """Episodes that ended on one vector step: `mask[i]` says whether row i's did."""

    mask: np.ndarray
    success: np.ndarray  # bool per row, meaningful where mask
    returns: np.ndarray  # float per row, meaningful where mask


@dataclass
class EpisodeTracker:
    """Per-task running episode return and success; keeps the finished ones until drained."""

    num_tasks: int
    running_return: np.ndarray = field(init=False)
    running_success: np.ndarray = field(init=False)
    finished_success: list[np.ndarray] = field(default_factory=list)
    finished_return: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.running_return = np.zeros(self.num_tasks)
        self.running_success = np.zeros(self.num_tasks, dtype=bool)

    def state_dict(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in ("running_return", "running_success", "finished_success", "finished_return")
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def record(self, reward: np.ndarray, success: np.ndarray, done: np.ndarray) -> FinishedEpisodes:
        """Add one vector step; returns the episodes it finished (and keeps them for `drain`)."""
        self.running_return += reward
        self.running_success |= success > 0
        finished = FinishedEpisodes(done.copy(), self.running_success.copy(), self.running_return.copy())
        if done.any():
            self.finished_success.append(np.where(done, self.running_success, np.nan))
            self.finished_return.append(np.where(done, self.running_return, np.nan))
            self.running_return[done] = 0.0
            self.running_success[done] = False
        return finished

    def drain(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-task mean success and return of the episodes finished since the last drain."""
        if not self.finished_success:
            return None
        with np.errstate(all="ignore"):
            success = np.nanmean(np.stack(self.finished_success), axis=0)
            returns = np.nanmean(np.stack(self.finished_return), axis=0)
        self.finished_success.clear()
        self.finished_return.clear()
        return success, returns
