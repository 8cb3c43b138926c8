"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

One learnable log-variance s_i per task and the objective `sum_i exp(-s_i) l_i + s_i`.

Factors of 1/2. The paper's regression form is `1/(2 sigma_i^2) l_i + log sigma_i`, which with
`s_i = log sigma_i^2` is `1/2 (exp(-s_i) l_i + s_i)` (LibMTL's form); this class drops the common
1/2. Both have the same stationary point in s, `exp(-s_i) = 1 / l_i` (s_i = log l_i), and the
same direction for the network; the 1/2 would only halve the network's gradient, which its Adam
undoes, and halve the s-gradient, which the Adam on s undoes too. Weights: `weights() = exp(-s)`
(1 each at the start, s = 0 as in the paper and LibMTL: the sum of the losses, K times MT-SAC's
mean, which the network's Adam is nearly invariant to).

Who moves s. In the paper s is a parameter of the same optimiser as the network. Here
`balanced_backward` differentiates the objective with respect to the network parameters only, so
s never gets a gradient from it: the balancer moves s itself. Inside `weighted_loss`, once per
update, it takes the analytic gradient `d/ds_i = 1 - exp(-s_i) l_i` at the detached losses of
that same update and gives s one step of its own Adam (option `lr`; betas and eps torch's
defaults). The network's objective is built with the weights from BEFORE that step, so network
and s move from the same point, as in the paper's joint gradient step. Doing it there rather than
in `update` needs no second evaluation of the losses after the network step
(`needs_losses_after_step` stays False). `weights()` then shows the weights the next update uses.
Call `weighted_loss` exactly once per update (as `balanced_backward` does).

Positive losses. The optimum `s_i = log l_i` exists only for `l_i > 0` (for `l_i <= 0` the
objective falls without bound as s_i -> -inf and the weights blow up silently), so
`needs_positive_losses = True`: configs put UW on the critic (squared TD errors) and the config
check refuses it on SAC's actor loss; `weighted_loss` also refuses a non-positive loss in one
sentence, as FAMO does (the check waits for the device once per update).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mtrl_famo.balancers.base import LossWeighting
from mtrl_famo.balancers.registry import register


@register("uw")
class UncertaintyWeighting(LossWeighting):
    """Loss weights exp(-s_i) with per-task log-variances s_i learnt by their own Adam."""

    needs_positive_losses = True  # s_i -> log l_i

    def __init__(self, num_tasks: int, *, lr: float):
        super().__init__(num_tasks)
        if lr <= 0:
            raise ValueError(f"UW lr must be positive, got {lr}.")
        self.log_vars = torch.zeros(num_tasks, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.log_vars], lr=lr)

    def to(self, device: torch.device | str) -> UncertaintyWeighting:
        state = self.optimizer.state_dict()
        self.log_vars = self.log_vars.detach().to(device).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.log_vars], lr=state["param_groups"][0]["lr"])
        self.optimizer.load_state_dict(state)
        return self

    def weights(self) -> torch.Tensor:
        return torch.exp(-self.log_vars.detach())

    def weighted_loss(self, losses: torch.Tensor) -> torch.Tensor:
        self.refuse_non_positive(losses, "UW", "its log-variances go to log l_i")
        log_vars = self.log_vars.detach().clone()  # the point both steps start from
        precision = torch.exp(-log_vars)
        objective = (precision.to(losses) * losses).sum() + log_vars.sum().to(losses)
        # d/ds_i (exp(-s_i) l_i + s_i), at this update's losses, in s's dtype.
        self.log_vars.grad = 1.0 - precision * losses.detach().to(precision)
        self.optimizer.step()
        return objective

    def state_dict(self) -> dict[str, Any]:
        # Deep copies, as FAMO's: torch hands out its live Adam moments.
        return {"log_vars": self.log_vars.detach().clone(), "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
