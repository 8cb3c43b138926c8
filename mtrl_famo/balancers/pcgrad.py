"""PCGrad (Yu et al., NeurIPS 2020): project away conflicting components, then combine.

For each task i, in a random order of the other tasks j, if the current g_i conflicts with the
ORIGINAL g_j (g_i . g_j < 0) then g_i <- g_i - (g_i . g_j / |g_j|^2) g_j. The projected
gradients are combined by mean (so with no conflicts PCGrad equals MT-SAC) or sum.

Every projected g_i stays a linear combination of the original gradients, g_i = sum_m C_im g_m,
and every dot product it needs is (C Gram)_ij. So the whole procedure runs on the K x K Gram
matrix and a K x K coefficient matrix; the `[K, D]` gradients are touched twice (Gram and the
final combination) instead of K^2 times.
"""

from __future__ import annotations

from typing import Any

import torch

from mtrl_famo.balancers.base import GramMixing
from mtrl_famo.balancers.registry import register

REDUCTIONS = ("mean", "sum")


@register("pcgrad")
class PCGrad(GramMixing):
    """Gradient surgery with per-task random projection orders from a seeded generator."""

    def __init__(self, num_tasks: int, *, reduction: str, seed: int):
        super().__init__(num_tasks)
        if reduction not in REDUCTIONS:
            raise ValueError(f"Unknown PCGrad reduction '{reduction}'; choose one of {', '.join(REDUCTIONS)}.")
        self.reduction = reduction
        self.generator = torch.Generator().manual_seed(int(seed))

    def draw_orders(self) -> torch.Tensor:
        """`[K, K-1]`: row i is a random permutation of the tasks other than i."""
        k = self.num_tasks
        keys = torch.rand(k, k, generator=self.generator)
        keys.fill_diagonal_(2.0)  # self sorts last and is dropped
        return keys.argsort(dim=1)[:, : k - 1]

    def coefficients(self, gram: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        """C with projected g_i = sum_m C_im g_m, from the Gram matrix and the orders."""
        k = gram.shape[0]
        coeffs = torch.eye(k, dtype=gram.dtype, device=gram.device)
        rows = torch.arange(k, device=gram.device)
        squared_norms = gram.diagonal()
        for position in range(orders.shape[1]):  # sequential by definition; all tasks at once
            others = orders[:, position]
            dots = (coeffs * gram[:, others].T).sum(dim=1)  # current g_i . original g_j
            scale = torch.where(dots < 0, dots / squared_norms[others].clamp_min(1e-30), torch.zeros_like(dots))
            coeffs[rows, others] -= scale
        return coeffs

    def mixing_weights(self, gram: torch.Tensor) -> torch.Tensor:
        orders = self.draw_orders().to(gram.device)
        mixing = self.coefficients(gram, orders).sum(dim=0)
        return mixing / self.num_tasks if self.reduction == "mean" else mixing

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
