"""Random loss weighting (Lin, Ye, Xu, Shi and Zhang, "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022).

Every update draws fresh weights and minimises `sum_i w_i l_i`:

- `distribution: normal` (the paper's default and LibMTL's): `w = softmax(z)`, z ~ N(0, I_K).
- `distribution: dirichlet`: w ~ Dirichlet(1, ..., 1), uniform on the simplex, used directly
  as the weights (no softmax), drawn as K independent Exp(1) draws over their sum. The paper
  compares several sampling distributions; this class offers only this one besides its default,
  because it needs nothing but the seeded generator (torch's Dirichlet takes no generator).

Both are on the simplex (sum 1, mean 1/K each): on MT-SAC's scale, whose weights are 1/K each.
The draws come from the balancer's own CPU generator, seeded by the `seed` option (the run's
seed), so runs are reproducible (and the same on every device); its state is in `state_dict`.
The weights are drawn in `weighted_loss`, once per call (`balanced_backward` calls it once per
update); `weights()` returns the last draw, or the distribution's mean 1/K before the first.
RLW works with losses of any sign (a convex combination), so it may balance the actor too.
"""

from __future__ import annotations

from typing import Any

import torch

from mtrl_famo.balancers.base import LossWeighting
from mtrl_famo.balancers.registry import register

DISTRIBUTIONS = ("normal", "dirichlet")


@register("rlw")
class RandomLossWeighting(LossWeighting):
    """Loss weights redrawn at random every update from a seeded generator."""

    def __init__(self, num_tasks: int, *, distribution: str, seed: int):
        super().__init__(num_tasks)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"Unknown RLW distribution '{distribution}'; choose one of {', '.join(DISTRIBUTIONS)}.")
        self.distribution = distribution
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last_weights = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)

    def draw(self) -> torch.Tensor:
        """Fresh `[K]` float64 weights on the simplex (on the CPU)."""
        if self.distribution == "normal":
            return torch.softmax(torch.randn(self.num_tasks, generator=self.generator, dtype=torch.float64), dim=0)
        exponentials = torch.empty(self.num_tasks, dtype=torch.float64).exponential_(generator=self.generator)
        return exponentials / exponentials.sum()

    def weights(self) -> torch.Tensor:
        return self.last_weights

    def weighted_loss(self, losses: torch.Tensor) -> torch.Tensor:
        self.last_weights = self.draw()
        return (self.last_weights.to(losses) * losses).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "last_weights": self.last_weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.last_weights = state["last_weights"].to(dtype=torch.float64).clone()
