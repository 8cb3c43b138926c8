"""The two kinds of balancer and what the trainer may ask of each."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

# On a CUDA device a failed loss check is read by the host only every this many checks (a read
# waits for the device): the error then comes up to this many updates late, with the first bad
# values. On the CPU there is no device to wait for and every check is read at once.
DEVICE_CHECK_EVERY = 100


def reads_at_once(values: torch.Tensor) -> bool:
    """Whether reading a check on `values` costs no device wait (CPU tensors): then it is read at once."""
    return not values.is_cuda


class DeferredCheck:
    """A "these values must be positive" check that records failures on the values' device.

    `__call__` never waits for a CUDA device (and does nothing host-side inside a CUDA graph
    capture); `raise_if_failed` reads the flag and raises `message(first bad values)`.
    """

    def __init__(self, message: Callable[[list], str]):
        self.message = message
        self.failed: torch.Tensor | None = None  # 0-d bool on the device: any check failed so far
        self.first_bad: torch.Tensor | None = None  # the values of the first failed check
        self.calls = 0

    def __call__(self, bad: torch.Tensor, values: torch.Tensor) -> None:
        """Record `bad` (0-d bool) for `values`; on the CPU raise at once, on CUDA every DEVICE_CHECK_EVERY calls."""
        values = values.detach()
        if reads_at_once(values):
            if bool(bad):
                raise ValueError(self.message(values.tolist()))
            return
        if self.failed is None or self.failed.device != values.device:
            self.failed = torch.zeros((), dtype=torch.bool, device=values.device)
            self.first_bad = torch.zeros_like(values)
        first = bad & ~self.failed
        self.first_bad.copy_(torch.where(first, values, self.first_bad))
        self.failed.logical_or_(bad)
        if values.is_cuda and torch.cuda.is_current_stream_capturing():
            return  # replays of a graph are counted by its owner, which calls `raise_if_failed`
        self.calls += 1
        if self.calls % DEVICE_CHECK_EVERY == 0:
            self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the check's one-sentence error if any recorded check failed (waits for the device)."""
        if self.failed is not None and bool(self.failed):
            raise ValueError(self.message(self.first_bad.tolist()))


def _non_positive_message(label: str, why: str, what: str, bad: list) -> str:
    return (
        f"{label} needs every loss above zero ({why}), got {what} {bad}; "
        f"apply {label} to the critic only (balancer.apply_to=[critic])."
    )


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
    # Whether one update with this balancer is a fixed sequence of device work, with no host-side
    # control flow and no host read of device values, so that `agent.cuda_graph` may capture it.
    graph_safe: ClassVar[bool] = False

    def __init__(self, num_tasks: int):
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}.")
        self.num_tasks = num_tasks
        # refuse_non_positive's device-side checks, one per (label, why, what) it is called with.
        self._deferred_checks: dict[tuple[str, str, str], DeferredCheck] = {}

    def update(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> None:
        """After-step hook with the losses on the same batch before and after the step."""

    def refuse_non_positive(self, values: torch.Tensor, label: str, why: str, what: str = "losses") -> None:
        """The runtime check of a `needs_positive_losses` method without a bound option: one sentence
        naming the method, the values and the fix. On a CUDA device it is read only every
        DEVICE_CHECK_EVERY calls (see `DeferredCheck`); call it on everything that must be positive at once."""
        key = (label, why, what)
        if key not in self._deferred_checks:
            self._deferred_checks[key] = DeferredCheck(functools.partial(_non_positive_message, *key))
        self._deferred_checks[key](values.le(0).any(), values)

    def deferred_checks(self) -> list[DeferredCheck]:
        """The device-side checks this balancer has recorded (a CUDA graph's owner reads them)."""
        return list(self._deferred_checks.values())

    def raise_if_failed(self) -> None:
        """Raise the error of any failed device-side check (waits for the device)."""
        for check in self.deferred_checks():
            check.raise_if_failed()

    def accepts_negative_losses(self) -> bool:
        """Whether losses below zero are fine with the options this balancer was built with."""
        return not self.needs_positive_losses

    @property
    def needs_losses_after_step(self) -> bool:
        """Whether the trainer must recompute the losses after the step for `update`."""
        return False

    def carried_state(self) -> tuple[list[torch.Tensor], list[torch.optim.Optimizer]]:
        """The tensors and optimizers this balancer carries from one update to the next (FAMO: its
        logits and their Adam), declared so that a CUDA graph's capture can put them back in place
        after its warm-up updates and the speed layers' self-check after its trial updates
        (mtrl_famo.compiled_update.snapshot). A graph-safe balancer must declare every tensor an
        update changes (tests/test_compile.py walks each one's attributes to check); stateless: none."""
        return [], []

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

    def combine_blocks(self, blocks: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """`combine` on J given as `[K, n_i]` column blocks: each block's part of d, and the K x K Gram
        matrix it formed (for the conflict statistics). A method that overrides it decides on the blocks
        without stacking `[K, D]`, and the public backward hands it the blocks
        (`mtrl_famo.balancers.backprop.combines_blocks`)."""
        raise NotImplementedError(f"{type(self).__name__} combines the stacked [K, D] matrix only.")

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

    def mix(self, gram: torch.Tensor) -> torch.Tensor:
        """The update's mixing weights m for the `[K, K]` Gram matrix of the task gradients, in its
        dtype and on its device, recorded as `last_mix`. Alone, it serves a caller that summed the Gram
        matrix parameter by parameter and never stacked `[K, D]` (mtrl_famo.balancers.backprop)."""
        mix = self.mixing_weights(gram.double()).to(gram)
        self.last_mix = mix
        return mix

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        return self.mix(grads @ grads.T) @ grads


class HostGramMixing(GramMixing):
    """A Gram-space method whose K x K problem is solved in float64 numpy on the host (CAGrad's dual,
    Nash-MTL's and FairGrad's Newton solves, MGDA, IMTL-G, Aligned-MTL). The one place where the
    Gram matrix leaves the device and the weights come back: one small copy each way per update."""

    @abstractmethod
    def mixing_weights_numpy(self, gram: np.ndarray) -> np.ndarray:
        """`[K, K]` float64 numpy Gram matrix in, `[K]` mixing weights m out."""

    def mixing_weights(self, gram: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.mixing_weights_numpy(gram.cpu().numpy()), device=gram.device)
