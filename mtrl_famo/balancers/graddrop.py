"""GradDrop (Chen et al., "Just Pick a Sign", NeurIPS 2020), Algorithm 1 with f = identity.

Per coordinate of the `[K, D]` task-gradient matrix G: the positive sign purity
`P = 1/2 (1 + sum_i g_i / sum_i |g_i|)`, one uniform draw U per coordinate (shared by all
tasks), and the mask `M_i = I[P > U] I[g_i > 0] + I[P < U] I[g_i < 0]`: with probability P a
coordinate keeps only its positive task entries, otherwise only its negative ones. The update is
`sum_i (leak + (1 - leak) M_i) g_i`, divided by K with `reduction: mean`.

Choices, and where this differs from the paper and LibMTL:

- Where it applies. The paper (and LibMTL, which refuses parameter gradients) puts GradDrop on
  the gradient of a shared activation, after summing the batch axis with the activation's sign,
  and lets backpropagation carry the masked signal into the layers below. Here, like the other
  gradient methods of this project, it acts on the per-task gradients of the shared parameters
  (the trunks), one purity per parameter coordinate (as torchjd's GradDrop aggregator does);
  the task heads get their own task's gradient / K (`balanced_backward`).
- Reduction. The paper sums the task gradients (its losses are summed). `mean` (the default)
  divides by K so that the update is on MT-SAC's scale (mean of the task losses): with no sign
  conflict at any coordinate every entry is kept and GradDrop equals MT-SAC exactly.
- Ties. U is drawn in [0, 1) from torch's float generator, so U = 0 has a small but non-zero
  probability (2^-24 per float32 coordinate: every few updates on a million-coordinate trunk).
  The paper's strict rule would then drop a coordinate whose entries are all negative (P = 0)
  although nothing conflicts. This class keeps the positive entries where `U < P` and the
  negative ones where `U >= P` (the tie U = P goes to the negative side), which is the paper's
  rule everywhere except on that measure-zero tie, and passes conflict-free coordinates (P = 1 or
  P = 0, computed exactly from the summed positive and negative parts) through unchanged.
- Randomness. U comes from the balancer's own generator, seeded by the `seed` option (the run's
  seed), on the gradients' device (`to(device)` moves it before the first draw), and its state is
  in `state_dict`, so a resumed run draws the same masks. No mixing weights: the update is not a
  mix `m^T G` of the task gradients, so `last_mix` (and `weights()`) stays None.
"""

from __future__ import annotations

from typing import Any

import torch

from mtrl_famo.balancers.base import GradientManipulation
from mtrl_famo.balancers.registry import register

REDUCTIONS = ("mean", "sum")


def _normalised(device: torch.device | str) -> torch.device:
    """`cuda` -> `cuda:<current>`, so a generator's device compares equal to a tensor's."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@register("graddrop")
class GradDrop(GradientManipulation):
    """Gradient sign dropout: per coordinate, keep one sign of the task gradients at random."""

    def __init__(self, num_tasks: int, *, leak: float, reduction: str, seed: int):
        super().__init__(num_tasks)
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"GradDrop leak must be between 0 and 1, got {leak}.")
        if reduction not in REDUCTIONS:
            raise ValueError(f"Unknown GradDrop reduction '{reduction}'; choose one of {', '.join(REDUCTIONS)}.")
        self.leak = float(leak)
        self.reduction = reduction
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.drawn = False  # whether the generator has been used (it can then no longer move)

    def to(self, device: torch.device | str) -> GradDrop:
        device = _normalised(device)
        if device != self.generator.device:
            if self.drawn:
                raise ValueError(
                    f"GradDrop's random stream has already been drawn on {self.generator.device} and cannot "
                    f"move to {device}; build the balancer on the device it will be used on."
                )
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self

    def draw_uniforms(self, like: torch.Tensor) -> torch.Tensor:
        """`[D]` uniforms in [0, 1), one per coordinate, from the seeded generator."""
        if _normalised(like.device) != self.generator.device:
            raise ValueError(
                f"GradDrop got gradients on {like.device} but its generator is on {self.generator.device}; "
                f"call .to({str(like.device)!r}) on the balancer first."
            )
        self.drawn = True
        return torch.rand(like.shape[1], generator=self.generator, device=like.device, dtype=like.dtype)

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        uniforms = self.draw_uniforms(grads)
        # Summed positive and negative parts (one [K, D] temporary at a time): an all-positive
        # coordinate has negative == 0 exactly, so P == 1 exactly, and an all-negative one P == 0.
        # One [K, D] temporary: the negative part is the total minus the positive part. Where no entry
        # is negative, both sums add the same values in the same order, so negative is exactly 0
        # (and positive exactly 0 where none is positive): conflict-free coordinates keep P = 1 or 0.
        positive = grads.clamp(min=0).sum(dim=0)
        total = grads.sum(dim=0)
        negative = total - positive
        absolute = positive - negative
        purity = 0.5 * (1.0 + total / absolute.clamp_min(torch.finfo(absolute.dtype).tiny))
        # sum_i M_i g_i: the positive part where U < P, the negative part elsewhere.
        direction = torch.where(uniforms < purity, positive, negative)
        if self.leak:
            direction = self.leak * total + (1.0 - self.leak) * direction
        self.last_mix = None  # elementwise: not a mix of the task gradients
        return direction / self.num_tasks if self.reduction == "mean" else direction

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "device": self.generator.device.type, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["device"] != self.generator.device.type:
            raise ValueError(
                f"GradDrop's saved random stream comes from a {state['device']} generator and cannot continue "
                f"on {self.generator.device.type}; resume on a {state['device']} device."
            )
        self.generator.set_state(state["generator"])
        self.drawn = bool(state["drawn"])
