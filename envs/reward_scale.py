"""Per-task reward scaling by a running standard deviation, as the published MTRL runs did it.

The CAGrad, FAMO, Nash-MTL and FairGrad MTRL experiments ran the facebookresearch/mtrl codebase,
whose Metaworld envs are wrapped in mtenv's `NormalizedEnvWrapper` with `normalize_reward=True`:
a copy of garage's `NormalizedEnv` (rllab's before it; garage commit af57bf9c,
src/garage/envs/normalized_env.py). Each task's env keeps its own running estimate, started at
mean 0 and variance 1, and on every step does, with rate alpha = 0.001:

    mean = (1 - alpha) * mean + alpha * r
    var  = (1 - alpha) * var  + alpha * (r - mean) ** 2     # the mean just updated
    r'   = r / (sqrt(var) + 1e-8)

(the mean is only tracked for the variance: the reward is divided, not centred). The estimate
is never reset: it runs across episodes, warm-up steps included.

Why not Metaworld 3's own `reward_normalization_method="exponential"`
(`metaworld.wrappers.NormalizeRewardsExponential`): its `step` calls `_update_reward_estimate`
and then `_apply_normalize_reward`, which updates the estimate a second time, so every step moves
the statistics twice (an effective rate of about 2 * alpha) and the scale differs from the
published one. This class updates exactly once per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The published wrapper's constants (garage's NormalizedEnv `reward_alpha` and epsilon), not run
# options: the reward_normalization=running_std protocol is defined by them.
ALPHA = 0.001
EPSILON = 1e-8


class RunningRewardScale:
    """K independent running estimates (row i = task i), updated once per vector step."""

    def __init__(self, num_tasks: int):
        self.mean = np.zeros(num_tasks, dtype=np.float64)
        self.var = np.ones(num_tasks, dtype=np.float64)

    @property
    def num_tasks(self) -> int:
        return int(self.mean.shape[0])

    def __call__(self, reward: np.ndarray) -> np.ndarray:
        """Update every task's estimate with its reward of this step (once), then return
        `reward / (sqrt(var) + 1e-8)` per task, in float64."""
        reward = np.asarray(reward, dtype=np.float64)
        if reward.shape != self.mean.shape:
            raise ValueError(f"Expected one reward per task, shape {self.mean.shape}, got {reward.shape}.")
        self.mean = (1.0 - ALPHA) * self.mean + ALPHA * reward
        self.var = (1.0 - ALPHA) * self.var + ALPHA * np.square(reward - self.mean)
        return reward / (np.sqrt(self.var) + EPSILON)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"mean", "var"}:
            raise ValueError(f"A reward scale state holds 'mean' and 'var', got {sorted(state)}.")
        mean = np.asarray(state["mean"], dtype=np.float64)
        var = np.asarray(state["var"], dtype=np.float64)
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise ValueError(
                f"Saved reward scale covers {mean.shape[0] if mean.ndim else 1} tasks, this run {self.num_tasks}."
            )
        self.mean, self.var = mean.copy(), var.copy()
