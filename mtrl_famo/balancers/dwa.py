"""Dynamic weight average (Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019), eq. 7.

`w_i(t) = K exp(r_i(t-1) / T) / sum_j exp(r_j(t-1) / T)` with `r_i(t-1) = L_i(t-1) / L_i(t-2)`,
L_i(t) the average loss of task i over period t, and w_i = 1 for the first two periods.

Choices:

- Period. The paper's period is a training epoch (its code averages the epoch's losses). RL has
  no epochs: a period here is `window` consecutive updates of this loss (option `window`), and
  L_i is the mean of task i's losses over those updates. Before two windows are complete the
  weights are uniform. The weights change only when a window completes, and the losses of the
  window in progress do not enter the weights of that window's own updates (as in the paper).
- Scale. The paper's weights sum to K and multiply a sum of losses. `weights()` returns
  `w_i / K` (a softmax, on the simplex: uniform = 1/K, MT-SAC's mean) and the objective is
  `sum_i (w_i / K) l_i`, so that DWA with equal ratios is exactly MT-SAC.
- Where the losses come from. DWA needs every update's losses; `weighted_loss` (called once per
  update by `balanced_backward`) records them, detached, after building that update's objective.
  No recomputation after the step is needed (`needs_losses_after_step` stays False).
- Positive losses. The ratios need positive window averages (`needs_positive_losses = True`:
  configs put DWA on the critic and the config check refuses it on SAC's actor loss). A window
  whose average is not above zero for some task is refused when it completes, in one sentence;
  that check waits for the device once per window, not once per update.

State (`state_dict`): the running sum and count of the window in progress and the averages of the
last two complete windows, so a resumed run continues with the same weights.
"""

from __future__ import annotations

from typing import Any

import torch

from mtrl_famo.balancers.base import LossWeighting
from mtrl_famo.balancers.registry import register


@register("dwa")
class DynamicWeightAverage(LossWeighting):
    """Loss weights from the softmax of each task's loss-decrease ratio over the last two windows."""

    needs_positive_losses = True  # ratios L_i(t-1) / L_i(t-2)

    def __init__(self, num_tasks: int, *, window: int, temperature: float):
        super().__init__(num_tasks)
        if window < 1:
            raise ValueError(f"DWA window must be at least 1 update, got {window}.")
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be positive, got {temperature}.")
        self.window = int(window)
        self.temperature = float(temperature)
        self.window_sum = torch.zeros(num_tasks, dtype=torch.float64)  # losses of the window in progress
        self.window_count = 0
        self.averages: list[torch.Tensor] = []  # the last two complete windows' averages, oldest first
        self._weights = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)

    def to(self, device: torch.device | str) -> DynamicWeightAverage:
        self.window_sum = self.window_sum.to(device)
        self.averages = [average.to(device) for average in self.averages]
        self._weights = self._weights.to(device)
        return self

    def weights(self) -> torch.Tensor:
        """`w / K` (float64): the weights of the next update (uniform 1/K until two windows are complete)."""
        return self._weights

    def _refresh_weights(self) -> None:
        if len(self.averages) < 2:
            self._weights = torch.full_like(self.window_sum, 1.0 / self.num_tasks)
            return
        older, newer = self.averages
        ratios = newer / older
        self._weights = torch.softmax(ratios / self.temperature, dim=0)

    def _close_window(self) -> None:
        average = self.window_sum / self.window_count
        self.refuse_non_positive(average, "DWA", "its weights are ratios of window averages", what="window averages")
        self.averages = [*self.averages, average][-2:]
        self.window_sum = torch.zeros_like(self.window_sum)
        self.window_count = 0
        self._refresh_weights()

    def weighted_loss(self, losses: torch.Tensor) -> torch.Tensor:
        objective = (self._weights.to(losses) * losses).sum()
        self.window_sum = self.window_sum.to(losses.device) + losses.detach().to(self.window_sum.dtype)
        self.window_count += 1
        if self.window_count == self.window:
            self._close_window()
        return objective

    def state_dict(self) -> dict[str, Any]:
        return {
            "window_sum": self.window_sum.clone(),
            "window_count": self.window_count,
            "averages": [average.clone() for average in self.averages],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.window_sum.device
        self.window_sum = state["window_sum"].to(device=device, dtype=torch.float64).clone()
        self.window_count = int(state["window_count"])
        self.averages = [average.to(device=device, dtype=torch.float64).clone() for average in state["averages"]]
        self._refresh_weights()
