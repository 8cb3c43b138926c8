"""The two kinds of balancer and what the trainer may ask of each."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch


class Balancer(ABC):
    """Turns K per-task losses into one update. Subclass one of the two kinds below.

    Constructor options have no defaults here: their one home is `configs/balancer/<name>.yaml`,
    and `mtrl_famo.balancers.make` fills what a caller leaves out from there.
    """

    name: ClassVar[str]  # set by `@register("<name>")` (mtrl_famo.balancers.registry)
    # Whether the balancer needs every loss positive (e.g. it takes the log of each loss), so that
    # a loss which can be negative (SAC's actor loss) is refused before training starts.
    needs_positive_losses: ClassVar[bool] = False
    # The option that shifts the losses, `l - option > 0` being what is then needed (None: no such option).
    loss_bound_option: ClassVar[str | None] = None

    def __init__(self, num_tasks: int):
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}.")
        self.num_tasks = num_tasks

    def update(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> None:
        """After-step hook with the losses on the same batch before and after the step."""

    def refuse_non_positive(self, values: torch.Tensor, label: str, why: str, what: str = "losses") -> None:
        """The runtime check of a `needs_positive_losses` method without a bound option: one sentence
        naming the method, the values and the fix. It waits for the device, so call it once per update
        (or less often) on everything that must be positive at once."""
        if bool(values.le(0).any()):
            raise ValueError(
                f"{label} needs every loss above zero ({why}), got {what} {values.detach().tolist()}; "
                f"apply {label} to the critic only (balancer.apply_to=[critic])."
            )

    def accepts_negative_losses(self) -> bool:
        """Whether losses below zero are fine with the options this balancer was built with."""
        return not self.needs_positive_losses

    @property
    def needs_losses_after_step(self) -> bool:
        """Whether the trainer must recompute the losses after the step for `update`."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (stateless balancers keep nothing)."""

    def to(self, device: torch.device | str) -> Balancer:
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

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        # m of the last update, d = m^T G, for methods whose update is such a mix (None otherwise):
        # logged beside the loss-weighting methods' weights, on the same scale (mtsac: 1/K each).
        self.last_mix: torch.Tensor | None = None

    @abstractmethod
    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        """`[K, D]` per-task gradients in, the `[D]` update direction out."""

    def weights(self) -> torch.Tensor | None:
        """The mixing weights m of the last update (d = m^T G), or None before the first update or
        when the method's update is not a mix of the task gradients."""
        return self.last_mix


class GramMixing(GradientManipulation):
    """A gradient method whose update is `d = m^T G` with m a function of the K x K Gram matrix
    `G G^T` alone (PCGrad, CAGrad, MGDA, Nash-MTL, ...): only that small matrix is needed to decide
    the update, and the `[K, D]` matrix is touched by two matmuls."""

    @abstractmethod
    def mixing_weights(self, gram: torch.Tensor) -> torch.Tensor:
        """`[K, K]` float64 Gram matrix in (on the gradients' device), `[K]` mixing weights m out."""

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        gram = (grads @ grads.T).double()
        mix = self.mixing_weights(gram).to(device=grads.device, dtype=grads.dtype)
        self.last_mix = mix
        return mix @ grads


class HostGramMixing(GramMixing):
    """A Gram-space method whose K x K problem is solved in float64 numpy on the host (CAGrad's dual,
    Nash-MTL's and FairGrad's Newton solves, MGDA, IMTL-G, Aligned-MTL). The one place where the
    Gram matrix leaves the device and the weights come back: one small copy each way per update."""

    @abstractmethod
    def mixing_weights_numpy(self, gram: np.ndarray) -> np.ndarray:
        """`[K, K]` float64 numpy Gram matrix in, `[K]` mixing weights m out."""

    def mixing_weights(self, gram: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.mixing_weights_numpy(gram.cpu().numpy()), device=gram.device)
