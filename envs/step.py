"""Normalise one gymnasium vector step (SAME_STEP autoreset) into plain per-row arrays.

This is the only place that knows where gymnasium and Metaworld put the final observation and
the success flag of a finished episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class VectorStep:
    """One vector step, row i = task i.

    `next_obs` is the true successor of the acted-on obs (the final obs where an episode ended);
    `obs` is what the agent acts on next (already the reset obs where an episode ended).
    `terminated` and `truncated` stay apart: TD targets bootstrap through truncation.
    """

    obs: np.ndarray
    next_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


def _masked(info: dict[str, Any], key: str, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Values and presence mask of a vector-info key, or None when absent."""
    if key not in info:
        return None
    mask = np.asarray(info.get(f"_{key}", np.ones(size, dtype=bool)), dtype=bool)
    return info[key], mask


def normalise_step(obs, reward, terminated, truncated, info: dict[str, Any]) -> VectorStep:
    """Turn the 5-tuple of `VectorEnv.step` into a `VectorStep`."""
    obs = np.asarray(obs, dtype=np.float32)
    size = obs.shape[0]
    next_obs = obs.copy()
    success = np.zeros(size, dtype=np.float32)

    running = _masked(info, "success", size)
    if running is not None:
        values, mask = running
        success[mask] = np.asarray(values, dtype=np.float32)[mask]

    final_obs = _masked(info, "final_obs", size)
    if final_obs is not None:
        values, mask = final_obs
        for row in np.flatnonzero(mask):
            next_obs[row] = np.asarray(values[row], dtype=np.float32)

    final_info = info.get("final_info")
    if final_info is not None:
        finished = _masked(final_info, "success", size)
        if finished is not None:
            values, mask = finished
            success[mask] = np.asarray(values, dtype=np.float32)[mask]

    return VectorStep(
        obs=obs,
        next_obs=next_obs,
        reward=np.asarray(reward, dtype=np.float32),
        terminated=np.asarray(terminated, dtype=bool),
        truncated=np.asarray(truncated, dtype=bool),
        success=success,
    )
