"""MT-SAC: equal weighting, the mean of the task losses."""

from __future__ import annotations

import torch

from mtrl_famo.balancers.base import LossWeighting
from mtrl_famo.balancers.registry import register


@register("mtsac")
class MeanLoss(LossWeighting):
    """Plain multitask SAC: minimise the average task loss."""

    graph_safe = True  # one mean: nothing on the host

    def weights(self) -> torch.Tensor:
        return torch.full((self.num_tasks,), 1.0 / self.num_tasks)

    def weighted_loss(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.mean()
