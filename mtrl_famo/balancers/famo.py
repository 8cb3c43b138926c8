"""FAMO (Liu et al., NeurIPS 2023), Algorithm 2 of the paper.

Task weights z = softmax(xi). The backpropagated objective is `c * sum_i z_i log(l_i - b_i + eps)`
with `c = 1 / sum_i (z_i / (l_i - b_i + eps))` held constant, so its gradient is
`sum_i (c z_i / (l_i - b_i + eps)) grad l_i`. After the parameter step, with the losses on the
same batch before (old) and after (new) the step,
`delta_i = log(l_i^old - b_i + eps) - log(l_i^new - b_i + eps)`, the gradient on xi is the
softmax Jacobian applied to delta, and xi takes one Adam(lr=w_lr, weight_decay=gamma) step.

Difference from the published MTRL file: it multiplies by `sum_i z_i / l_i` where the paper
(and this class) divides; only the paper's form makes the update the one analysed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from mtrl_famo.balancers.base import DeferredCheck, LossWeighting
from mtrl_famo.balancers.registry import register
from mtrl_famo.optim import load_adam_state


@register("famo")
class FAMO(LossWeighting):
    """Fast Adaptive Multitask Optimisation: O(1) loss weighting that equalises log-loss decrease."""

    needs_positive_losses = True  # log(l_i - b_i + eps)
    loss_bound_option = "min_losses"
    graph_safe = True  # device work only: the bound check is a DeferredCheck, Adam is capturable on CUDA

    def __init__(
        self,
        num_tasks: int,
        *,
        w_lr: float,
        gamma: float,
        min_losses: float | Sequence[float],
        eps: float,
    ):
        super().__init__(num_tasks)
        if w_lr <= 0:
            raise ValueError(f"FAMO w_lr must be positive, got {w_lr}.")
        if gamma < 0:
            raise ValueError(f"FAMO gamma (weight decay) must be non-negative, got {gamma}.")
        if eps <= 0:
            raise ValueError(f"FAMO eps must be positive, got {eps}.")
        bounds = torch.as_tensor(min_losses, dtype=torch.float32).flatten()
        if bounds.numel() == 1:
            bounds = bounds.expand(num_tasks).clone()
        if bounds.numel() != num_tasks:
            raise ValueError(f"FAMO min_losses has {bounds.numel()} entries; give one number or {num_tasks}.")
        self.eps = eps
        self.min_losses = bounds
        self.logits = torch.zeros(num_tasks, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=w_lr, weight_decay=gamma)
        self.bound_check = DeferredCheck(self._bound_message)

    def to(self, device: torch.device | str) -> FAMO:
        state = self.optimizer.state_dict()
        self.logits = self.logits.detach().to(device).requires_grad_(True)
        self.min_losses = self.min_losses.to(device)
        # Capturable on CUDA: its step count stays on the device, so a CUDA graph can replay it.
        self.optimizer = torch.optim.Adam(
            [self.logits],
            **{k: state["param_groups"][0][k] for k in ("lr", "weight_decay")},
            capturable=self.logits.is_cuda,
        )
        load_adam_state(self.optimizer, state)  # keeps capturable=True: the saved group says False
        return self

    def accepts_negative_losses(self) -> bool:
        """Only with every bound b_i below zero can a negative loss still give `l_i - b_i > 0`."""
        return bool((self.min_losses < 0).all())

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits.detach(), dim=-1)

    @property
    def needs_losses_after_step(self) -> bool:
        return True

    def _shifted(self, *losses: torch.Tensor) -> list[torch.Tensor]:
        """`l - b + eps` of each loss vector, refusing non-positive values (their log is undefined).

        The refusal is a `DeferredCheck`: on the CPU it raises at once; on a CUDA device it never
        waits for the device, and the error comes at most DEVICE_CHECK_EVERY updates late.
        """
        shifted = [loss - self.min_losses + self.eps for loss in losses]
        for loss, value in zip(losses, shifted):
            self.bound_check(value.le(0).any(), loss)
        return shifted

    def _bound_message(self, bad: list) -> str:
        return (
            f"FAMO needs every loss above its min_losses bound, got losses {bad} "
            f"with min_losses {self.min_losses.tolist()}; apply FAMO to the critic only, or lower min_losses."
        )

    def deferred_checks(self) -> list[DeferredCheck]:
        return [self.bound_check]

    def carried_state(self) -> tuple[list[torch.Tensor], list[torch.optim.Optimizer]]:
        return [self.logits], [self.optimizer]

    def weighted_loss(self, losses: torch.Tensor) -> torch.Tensor:
        z = self.weights()
        (shifted,) = self._shifted(losses)
        c = 1.0 / (z / shifted.detach()).sum()
        return c * (z * shifted.log()).sum()

    def update(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> None:
        # In the logits' dtype: float64 (or bf16) losses must not break the float32 logits' update.
        before, after = self._shifted(losses_before, losses_after)
        delta = (before.log() - after.log()).detach().to(self.logits)
        z = self.weights()
        # softmax Jacobian (diag(z) - z z^T) applied to delta.
        self.logits.grad = z * (delta - (z * delta).sum())
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        # Deep copies: torch's optimizer state_dict hands out its live Adam moment tensors, so a
        # snapshot (or a balancer loaded from it) would otherwise keep moving with this one.
        return {"logits": self.logits.detach().clone(), "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        # This optimizer's execution flags win over the saved ones: a state saved on the CPU
        # (capturable=False) loaded into a CUDA balancer must stay capturable for a graph replay.
        load_adam_state(self.optimizer, copy.deepcopy(state["optimizer"]))
