"""FairGrad (Ban & Ji, ICML 2024): α-fair allocation of the update among the tasks.

With A = G G^T the K x K Gram matrix, find w > 0 with

    (A w)_i = w_i^(-1/α)        for every task i

and update along d = w^T G. Task i's share of the update is its directional derivative
g_i . d = (A w)_i, so the condition asks for the α-fair utility allocation; α = 1 is Nash-MTL's
condition A w = 1/w (proportional fairness), α → ∞ approaches max-min fairness.

The condition is the stationarity condition of the strictly convex potential

    P(w) = ½ w^T A w - Σ_i φ(w_i),   φ'(w) = w^(-1/α)   (φ = log for α = 1),

whose Hessian A + diag((1/α) w^(-1/α-1)) is positive definite for w > 0. `solve_alpha_fair` minimises
it in float64 with Newton's method (linear solve, steps cut to stay inside w > 0, backtracking on
the potential or the residual), warm-started from the previous solution, so it converges in a few iterations to
machine accuracy; the published MTRL code (OptMN-Lab/fairgrad mtrl_files/fairgrad.py) instead takes
20 SGD steps on |A w - w^(-1/α)|^2 from w = 1/K, which is approximate.

Degenerate Gram matrices. When 0 lies in the convex hull of the task gradients (a Pareto-stationary
point: two opposite gradients, ...) the potential has no minimiser. A tiny ridge relative to each
task's own squared gradient norm, A + ε diag(A) with ε = `ridge`, makes it always solvable and
changes each condition by a relative ε A_ii w_i^2 (ε exactly for orthogonal gradients): nothing
measurable otherwise. Then:
  * duplicated task gradients are fine (solvable without the ridge; they get equal weights);
  * a task whose gradient is exactly zero has no effect on d: it gets weight 0 and the others are
    solved as if it were absent;
  * gradients with a positive combination summing to zero (e.g. g2 = -g1) give large weights, bounded
    by the ridge (about ε^(-α/(α+1)) / |g_i|^(2α/(α+1)) for such a pair), and |d|^2 = w^T A w
    <= Σ_i w_i^(1-1/α): for α = 1 (Nash-MTL) at most K whatever the gradients; for α > 1 the update
    near such points is large (the α-fair solution itself grows without bound there) and the ridge caps it;
  * all gradients zero (or a non-finite Gram matrix): weights 0;
  * a Gram matrix with slightly negative eigenvalues (rounding in a float32 G G^T) has them raised to
    a tiny positive floor before solving (only when A + ε diag(A) fails a Cholesky factorisation, so
    the common case is untouched).
Nothing in these cases produces NaN or inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtrl_famo.balancers.base import HostGramMixing
from mtrl_famo.balancers.registry import register

ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
BACKTRACKS = 40  # halvings before a line search gives up (rounding: no decrease measurable any more)
ROUNDING = 16 * np.finfo(np.float64).eps  # residual below this times max_i x_i^p (|M| x)_i is rounding noise
TO_BOUNDARY = 0.99  # a Newton step goes at most this fraction of the way to the boundary w_i = 0


def _potential(x: np.ndarray, matrix: np.ndarray, power: float) -> float:
    """½ x^T M x - Σ φ(x_i), φ(x) = (x^(1-p) - 1) / (1 - p) (log x at p = 1), p = 1/α."""
    logs = np.log(x)
    barrier = logs if power == 1.0 else np.expm1((1.0 - power) * logs) / (1.0 - power)
    return float(0.5 * x @ matrix @ x - barrier.sum())


def _positive_definite(scaled: np.ndarray, ridge: float) -> np.ndarray:
    """scaled + ridge diag(scaled); if that fails a Cholesky factorisation (negative eigenvalues from
    rounding), the eigenvalues of `scaled` are first raised to a tiny positive floor."""
    diagonal = np.diag(np.diag(scaled))
    matrix = scaled + ridge * diagonal
    try:
        np.linalg.cholesky(matrix)
        return matrix
    except np.linalg.LinAlgError:
        pass
    values, vectors = np.linalg.eigh(scaled)
    floor = ridge * float(np.min(np.diag(scaled)))
    for _ in range(8):  # floor the eigenvalues higher until rounding no longer spoils the factorisation
        matrix = (vectors * np.maximum(values, floor)) @ vectors.T + ridge * diagonal
        matrix = 0.5 * (matrix + matrix.T)
        try:
            np.linalg.cholesky(matrix)
            return matrix
        except np.linalg.LinAlgError:
            floor = 100.0 * floor + 1e-15 * float(np.max(values))
    return matrix + 1e-8 * float(np.max(np.diag(matrix))) * np.eye(scaled.shape[0])


def solve_alpha_fair(
    gram: np.ndarray,
    alpha: float,
    start: np.ndarray | None,
    *,
    ridge: float,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """w > 0 with ((A + ε D) w)_i = w_i^(-1/α), D = diag(A), ε = ridge; returns (w, scaled solution).

    Tasks with an exactly zero gradient (A_ii = 0) have no effect on d: they get w_i = 0 and the
    others are solved without them. The rest is solved on the scaled matrix A / s, s = mean of their
    A_ii, so that the tolerance and the warm start do not depend on the gradients' units: if
    (A / s + ε D / s) b = b^(-p) (p = 1/α) then w = s^(-1/(1+p)) b. `start` is a previous scaled
    solution (the second return value, one entry per task) or None (start from ones). Stops when the
    relative residual |w_i^p ((A + ε D) w)_i - 1| of every task is at most `tol` (or at the rounding
    error of its own computation, which exceeds `tol` only for nearly singular Gram matrices), when a
    line search can no longer decrease the potential or the residual, or after `max_iter` Newton
    steps; the last iterate, the best so far, is returned in every case. No task with a gradient, or
    a non-finite A: zeros and None.
    """
    k = gram.shape[0]
    power = 1.0 / alpha
    symmetric = 0.5 * (gram + gram.T)
    weights = np.zeros(k)
    active = np.diag(symmetric) > 0.0
    if not active.any() or not np.isfinite(symmetric).all():
        return weights, None
    scale = float(np.mean(np.diag(symmetric)[active]))
    matrix = _positive_definite(symmetric[np.ix_(active, active)] / scale, ridge)

    usable = start is not None and start.shape == (k,) and np.isfinite(start).all() and (start > 0).all()
    full = start.astype(np.float64, copy=True) if usable else np.ones(k)
    x = full[active]
    magnitude = np.abs(matrix)
    value = _potential(x, matrix, power)
    mx = matrix @ x
    residual = x**power * mx - 1.0
    error = float(np.max(np.abs(residual)))
    for _ in range(max_iter):
        x_pow = x**power
        # Converged, or each residual is down to the rounding of its own computation (cancellation in
        # (M x)_i when the Gram matrix is nearly singular): no step could be measured to improve it.
        if np.all(np.abs(residual) <= np.maximum(tol, ROUNDING * x_pow * (magnitude @ x))):
            break
        gradient = mx - 1.0 / x_pow
        hessian = matrix + np.diag(power / (x_pow * x))
        step = -np.linalg.solve(hessian, gradient)
        slope = float(gradient @ step)
        if not slope < 0.0:
            break
        shrinking = step < 0
        t = min(1.0, TO_BOUNDARY * float(np.min(-x[shrinking] / step[shrinking]))) if shrinking.any() else 1.0
        for _ in range(BACKTRACKS):
            candidate = x + t * step
            candidate_value = _potential(candidate, matrix, power)
            candidate_mx = matrix @ candidate
            candidate_residual = candidate**power * candidate_mx - 1.0
            candidate_error = float(np.max(np.abs(candidate_residual)))
            # Armijo on the potential; near the solution its decrease drops below float64 rounding,
            # so a step that halves the residual of the condition is accepted as well.
            if candidate_value <= value + ARMIJO * t * slope or candidate_error <= 0.5 * error:
                break
            t *= 0.5
        else:
            break  # no measurable progress: as accurate as float64 allows
        x, value, mx, residual, error = candidate, candidate_value, candidate_mx, candidate_residual, candidate_error

    weights[active] = x * scale ** (-1.0 / (1.0 + power))
    full[active] = x
    return weights, full


@register("fairgrad")
class FairGrad(HostGramMixing):
    """d = w^T G with (G G^T w)_i = w_i^(-1/α): α-fair shares of the update (α = 1: Nash-MTL)."""

    def __init__(self, num_tasks: int, *, alpha: float, ridge: float, tol: float, max_iter: int):
        super().__init__(num_tasks)
        if not alpha > 0:
            raise ValueError(f"FairGrad alpha must be positive, got {alpha}.")
        if not ridge > 0:
            raise ValueError(f"FairGrad ridge must be positive (it keeps degenerate problems solvable), got {ridge}.")
        if not tol > 0:
            raise ValueError(f"FairGrad tol must be positive, got {tol}.")
        if max_iter < 1:
            raise ValueError(f"FairGrad max_iter must be at least 1, got {max_iter}.")
        self.alpha = float(alpha)
        self.ridge = float(ridge)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.start: np.ndarray | None = None  # scaled solution of the last solve: the next warm start

    def mixing_weights_numpy(self, gram: np.ndarray) -> np.ndarray:
        """`mixing_weights` on a float64 numpy Gram matrix (the K x K problem is solved on the host)."""
        weights, scaled = solve_alpha_fair(
            gram, self.alpha, self.start, ridge=self.ridge, tol=self.tol, max_iter=self.max_iter
        )
        if scaled is not None:
            self.start = scaled
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {"start": None if self.start is None else self.start.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        start = state["start"]
        self.start = None if start is None else np.asarray(start, dtype=np.float64).copy()
