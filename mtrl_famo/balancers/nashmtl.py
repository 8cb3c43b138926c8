"""Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution among the tasks.

With A = G G^T the K x K Gram matrix, find alpha > 0 with

    (A alpha)_i = 1 / alpha_i     i.e. alpha_i (g_i . d) = 1 for every task i,

and update along d = alpha^T G. This is FairGrad's condition at α = 1 and is solved by the same
float64 Newton method on the convex potential ½ a^T A a - Σ log a_i (`fairgrad.solve_alpha_fair`:
linear solves, steps kept inside a > 0, backtracking, warm start from the last solution, a ridge
relative to each task's squared gradient norm for singular Gram matrices; see that module for what
degenerate inputs give).
The paper instead runs up to 20 rounds of a convex approximation through cvxpy/ECOS.

Scale. alpha is in the gradients' own units, as in the paper: alpha_i (A alpha)_i = 1 with the
Gram matrix A of the gradients as they are, so |d|^2 = alpha^T A alpha = sum_i alpha_i (A alpha)_i = K
whatever the gradients' size (multiplying G by s divides alpha by s and leaves d unchanged). Both
published codes (AvivNavon/nash-mtl methods/weight_methods.py, and the MTRL file Cranial-XIX/FAMO
mtrl_files/nashmtl.py) solve for this alpha: they hand their solver G G^T / |G G^T|_F for
conditioning but put the factor back in its constraint (-log(alpha_i |A|_F) - log((A / |A|_F) alpha)_i
<= 0, i.e. alpha_i (A alpha)_i >= 1 in the original scale, active at their optimum). Here the solver
scales internally too (by the mean squared gradient norm, `fairgrad.solve_alpha_fair`) and returns
alpha in the original scale.

Cheaper variant and clipping, as in the published code: alpha is recomputed every
`update_weights_every`-th update and reused in between (the old alpha applied to the new G), and
with `max_norm > 0` alpha is scaled down so that |alpha^T G| = sqrt(alpha^T A alpha) <= max_norm, on
every update (including those that reuse alpha; the reused alpha is the unclipped one). A
recomputation on an all-zero Gram matrix gives alpha = 0, reused until the next recomputation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mtrl_famo.balancers.base import HostGramMixing
from mtrl_famo.balancers.fairgrad import solve_alpha_fair
from mtrl_famo.balancers.registry import register


@register("nashmtl")
class NashMTL(HostGramMixing):
    """d = alpha^T G with alpha_i (G G^T alpha)_i = 1: the Nash bargaining update."""

    def __init__(
        self,
        num_tasks: int,
        *,
        update_weights_every: int,
        max_norm: float,
        ridge: float,
        tol: float,
        max_iter: int,
    ):
        super().__init__(num_tasks)
        if update_weights_every < 1:
            raise ValueError(f"Nash-MTL update_weights_every must be at least 1, got {update_weights_every}.")
        if not max_norm >= 0:
            raise ValueError(f"Nash-MTL max_norm must be non-negative (0 disables clipping), got {max_norm}.")
        if not ridge > 0:
            raise ValueError(f"Nash-MTL ridge must be positive (it keeps degenerate problems solvable), got {ridge}.")
        if not tol > 0:
            raise ValueError(f"Nash-MTL tol must be positive, got {tol}.")
        if max_iter < 1:
            raise ValueError(f"Nash-MTL max_iter must be at least 1, got {max_iter}.")
        self.update_weights_every = int(update_weights_every)
        self.max_norm = float(max_norm)
        self.ridge = float(ridge)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.step = 0  # updates so far; alpha is recomputed when step % update_weights_every == 0
        self.alpha: np.ndarray | None = None  # the current (unclipped) weights, reused between solves
        self.start: np.ndarray | None = None  # scaled solution of the last solve: the next warm start

    def mixing_weights_numpy(self, gram: np.ndarray) -> np.ndarray:
        """`mixing_weights` on a float64 numpy Gram matrix (the K x K problem is solved on the host)."""
        symmetric = 0.5 * (gram + gram.T)
        if self.alpha is None or self.step % self.update_weights_every == 0:
            alpha, scaled = solve_alpha_fair(
                symmetric, 1.0, self.start, ridge=self.ridge, tol=self.tol, max_iter=self.max_iter
            )
            if scaled is not None:
                self.start = scaled
            self.alpha = alpha
        self.step += 1
        mixing = self.alpha.copy()
        if self.max_norm > 0:
            norm = math.sqrt(max(float(mixing @ symmetric @ mixing), 0.0))
            if norm > self.max_norm:
                mixing *= self.max_norm / norm
        return mixing

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "alpha": None if self.alpha is None else self.alpha.copy(),
            "start": None if self.start is None else self.start.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.alpha = None if state["alpha"] is None else np.asarray(state["alpha"], dtype=np.float64).copy()
        self.start = None if state["start"] is None else np.asarray(state["start"], dtype=np.float64).copy()
