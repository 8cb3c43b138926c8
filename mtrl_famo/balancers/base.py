"""The two kinds of balancer and what the trainer may ask of each."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Balancer(ABC):
    """Turns K per-task losses into one update. Subclass one of the two kinds below."""

    def __init__(self, num_tasks: int):
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}.")
        self.num_tasks = num_tasks

    def update(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> None:
        """After-step hook with the losses on the same batch before and after the step."""

    @property
    def needs_losses_after_step(self) -> bool:
        """Whether the trainer must recompute the losses after the step for `update`."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (stateless balancers keep nothing)."""

    def to(self, device: torch.device | str) -> "Balancer":
        return self


class LossWeighting(Balancer):
    """Balances by weighting the task losses: one ordinary backward pass of a scalar."""

    @abstractmethod
    def weights(self) -> torch.Tensor:
        """The current task weights, a length-K tensor (for logging and inspection)."""

    def weighted_loss(self, losses: torch.Tensor) -> torch.Tensor:
        """The scalar whose gradient is the balanced update direction."""
        return (self.weights().to(losses) * losses).sum()


class GradientManipulation(Balancer):
    """Balances by combining the `[K, D]` per-task gradients of the shared parameters."""

    @abstractmethod
    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        """`[K, D]` per-task gradients in, the `[D]` update direction out."""
