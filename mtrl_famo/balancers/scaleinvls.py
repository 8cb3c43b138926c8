"""Scale-invariant loss baseline: minimise `sum_i log l_i` (the "SI" baseline of the FAMO paper,
Liu et al., NeurIPS 2023; Navon et al.'s Nash-MTL paper uses the same baseline).

Its gradient is `sum_i grad l_i / l_i`: multiplying one task's loss by a constant does not change
the update, so no task dominates through its loss scale. It is FAMO with its task weights frozen
at uniform, up to FAMO's normalisation.

Weights. `weights()` reports the effective weights of the last call normalised to the simplex,
`(1/l_i) / sum_j (1/l_j)`, so that they compare with the other methods' logged weights (MT-SAC:
1/K each; equal losses give 1/K each here too). The actual gradient is that convex combination of
the task gradients times `sum_j 1/l_j`, a scale the network's Adam is nearly invariant to.
Before the first call `weights()` is uniform, 1/K.

Positive losses. The log needs every loss above zero: `needs_positive_losses = True`, with no
bound option to shift the losses (configs put it on the critic, and the config check refuses it
on SAC's actor loss), and `weighted_loss` refuses a non-positive loss in one sentence (as FAMO
does; the check waits for the device once per update).
"""

from __future__ import annotations

import torch

from mtrl_famo.balancers.base import LossWeighting
from mtrl_famo.balancers.registry import register


@register("scaleinvls")
class ScaleInvariantLoss(LossWeighting):
    """Minimise the sum of the log task losses: update sum_i grad l_i / l_i."""

    needs_positive_losses = True  # log l_i

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.last_weights = torch.full((num_tasks,), 1.0 / num_tasks)

    def weights(self) -> torch.Tensor:
        return self.last_weights

    def weighted_loss(self, losses: torch.Tensor) -> torch.Tensor:
        self.refuse_non_positive(losses, "scaleinvls", "it minimises the sum of their logs")
        inverse = 1.0 / losses.detach()
        self.last_weights = inverse / inverse.sum()
        return losses.log().sum()
