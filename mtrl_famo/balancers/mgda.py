"""MGDA (Désidéri 2012; Sener & Koltun, NeurIPS 2018): the minimum-norm point of the task gradients' hull.

    m = argmin_{m in simplex} m^T A m,   A = G G^T,   d = m^T G,

so d is the shortest vector in the convex hull of g_1..g_K: a direction that decreases every task
loss (d . g_i >= |d|^2 for all i) unless d = 0, in which case the point is Pareto-stationary.

The problem lives in K x K space and is solved exactly, in float64 on the host, with Wolfe's
minimum-norm-point algorithm (Wolfe 1976) written on the Gram matrix: an active-set method whose
"corral" S is a set of affinely independent task gradients; each minor cycle moves to the
minimiser of |x|^2 over the affine hull of S (a (|S|+1)-square linear solve) and drops the
points whose weight would turn negative; each major cycle adds the task j minimising
x . g_j = (A m)_j. It stops when the Frank-Wolfe gap m^T A m - min_j (A m)_j (a certificate:
f(m) - f* <= 2 gap) is at most `tol * max_i A_ii`, which at the right corral is rounding only, so
the KKT conditions (A m)_i = m^T A m on the support and >= elsewhere hold to ~1e-15 relative
(first, one solve checks whether the affine minimiser of all K gradients is already inside the
simplex and optimal, which skips the iterations when every task is in the support). The
published code (Sener & Koltun's MinNormSolver, LibMTL) instead runs up to 250 Frank-Wolfe steps
with a 1e-5 stopping rule.

When the gradients are affinely dependent (identical gradients, K > D + 1) the point d is still
unique but m is not. Ties are broken towards the minimum-norm m: among the tasks whose constraint
is tight, m moves along the (numerically) null directions of their Gram block, within the
simplex, towards the smallest |m|, so identical gradients share their weight equally instead of
one of them taking it all.

Degenerate inputs: all gradients zero -> m = 1/K (d = 0 whatever m); one zero task gradient ->
the origin is in the hull, d = 0 and that task carries the weight (MGDA stops at a stationary
task); K = 1 -> m = [1].

Normalisation (`normalization`), as LibMTL's `mgda_gn` / the official `gradient_normalizers`:
'none' solves on G; 'l2' solves on the unit gradients g_i/|g_i| (A_ij / (|g_i| |g_j|)) and the
update is sum_i w_i g_i/|g_i|, i.e. m_i = w_i / |g_i| on the raw gradients (a zero gradient is
left as it is). 'loss' and 'loss+' divide by the task losses, which a Gram-matrix method is not
given, so they are not offered.
"""

from __future__ import annotations

import numpy as np

from mtrl_famo.balancers.base import HostGramMixing
from mtrl_famo.balancers.registry import register

NORMALIZATIONS = ("none", "l2")


def _affine_minimizer(block: np.ndarray) -> np.ndarray:
    """Weights mu (sum 1) of the point of smallest norm in the affine hull of the points whose Gram
    matrix is `block`: the bordered KKT system [[A_S, 1], [1^T, 0]] [mu; -nu] = [0; 1]."""
    size = block.shape[0]
    bordered = np.ones((size + 1, size + 1))
    bordered[:size, :size] = block
    bordered[size, size] = 0.0
    rhs = np.zeros(size + 1)
    rhs[size] = 1.0
    try:
        solution = np.linalg.solve(bordered, rhs)
    except np.linalg.LinAlgError:  # affinely dependent corral (rounding): least squares instead
        solution = np.linalg.lstsq(bordered, rhs, rcond=None)[0]
    return solution[:size]


def _wolfe(gram: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Wolfe's minimum-norm-point algorithm on a Gram matrix whose largest diagonal entry is 1."""
    k = gram.shape[0]
    support = [int(np.argmin(np.diag(gram)))]
    weights = np.ones(1)
    for _ in range(max_iter):
        products = gram[:, support] @ weights  # x . g_j for every j
        value = float(weights @ products[support])  # |x|^2
        j = int(np.argmin(products))
        if value - products[j] <= tol or j in support:  # certified optimal (or rounding-level)
            break
        support.append(j)
        weights = np.append(weights, 0.0)
        while True:  # minor cycles: to the affine minimiser of the corral, dropping what turns negative
            mu = _affine_minimizer(gram[np.ix_(support, support)])
            if np.all(mu > 0):
                weights = mu
                break
            negative = np.nonzero(mu <= 0)[0]
            ratios = weights[negative] / (weights[negative] - mu[negative])
            leaving = int(negative[np.argmin(ratios)])
            if leaving == len(support) - 1 and weights[leaving] == 0.0:
                # The point just added cannot enter: rounding says we are optimal already.
                support.pop()
                weights = weights[:-1]
                return _scatter(k, support, weights)
            weights = weights + ratios.min() * (mu - weights)
            keep = weights > 0
            keep[leaving] = False
            support = [s for s, kept in zip(support, keep) if kept]
            weights = weights[keep] / weights[keep].sum()
    return _scatter(k, support, weights)


def _interior(gram: np.ndarray, tol: float) -> np.ndarray | None:
    """The affine minimiser of all K points when it is inside the simplex and meets the KKT
    conditions (every (A m)_i equal): then it is the answer, found with one solve (the common case
    for many high-dimensional gradients). None otherwise."""
    weights = _affine_minimizer(gram)
    if not np.all(weights > 0):
        return None
    weights = weights / weights.sum()
    products = gram @ weights
    return weights if np.ptp(products) <= tol else None


def _scatter(k: int, support: list[int], weights: np.ndarray) -> np.ndarray:
    full = np.zeros(k)
    full[support] = np.clip(weights, 0.0, None)
    return full / full.sum()


def _break_ties(gram: np.ndarray, weights: np.ndarray, tol: float) -> np.ndarray:
    """Among the optimal m (same point d), move towards the one of smallest norm, staying in the
    simplex. Only tight tasks ((A m)_j at the optimum value) can carry weight at an optimum, and
    only directions v with G_T^T v = 0 (null space of their Gram block) and sum v = 0 keep d."""
    products = gram @ weights
    tight = np.nonzero(products <= weights @ products + tol)[0]
    if tight.size < 2:
        return weights
    eigenvalues, vectors = np.linalg.eigh(gram[np.ix_(tight, tight)])
    cut = np.finfo(np.float64).eps * tight.size * max(float(eigenvalues[-1]), 1.0)
    null = vectors[:, eigenvalues <= cut]
    if null.shape[1] == 0:
        return weights
    sums = null.sum(axis=0)  # keep sum m = 1: the part of span(null) orthogonal to the ones vector
    if np.linalg.norm(sums) > 1e-12 * np.sqrt(tight.size):
        null = null @ np.linalg.svd(sums[None, :])[2][1:].T
    if null.shape[1] == 0:
        return weights
    current = weights[tight]
    step = -null @ (null.T @ current)  # to the minimum-norm point of the optimal affine set
    shrinking = step < 0
    reach = min(1.0, float(np.min(current[shrinking] / -step[shrinking]))) if shrinking.any() else 1.0
    moved = weights.copy()
    moved[tight] = np.clip(current + reach * step, 0.0, None)
    return moved / moved.sum()


def min_norm_weights(gram: np.ndarray, *, tol: float, max_iter: int) -> np.ndarray:
    """m on the simplex minimising m^T A m (float64 numpy in and out), ties towards the smallest |m|."""
    k = gram.shape[0]
    scale = float(np.max(np.diag(gram)))
    if not scale > 0:  # every gradient is zero: d = 0 for any m
        return np.full(k, 1.0 / k)
    normalised = gram / scale
    normalised = 0.5 * (normalised + normalised.T)
    weights = _interior(normalised, tol)
    if weights is None:
        weights = _wolfe(normalised, tol, max_iter)
    return _break_ties(normalised, weights, tol)


@register("mgda")
class MGDA(HostGramMixing):
    """Multiple-gradient descent: d is the minimum-norm point of the convex hull of the task gradients."""

    def __init__(self, num_tasks: int, *, normalization: str, tol: float, max_iter: int):
        super().__init__(num_tasks)
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"Unknown MGDA normalization '{normalization}'; choose one of {', '.join(NORMALIZATIONS)}."
            )
        if not tol > 0:
            raise ValueError(f"MGDA tol must be positive, got {tol}.")
        if max_iter < 1:
            raise ValueError(f"MGDA max_iter must be at least 1, got {max_iter}.")
        self.normalization = normalization
        self.tol = float(tol)
        self.max_iter = int(max_iter)

    def mixing_weights_numpy(self, gram: np.ndarray) -> np.ndarray:
        """`mixing_weights` on a float64 numpy Gram matrix (the problem is solved on the host)."""
        if self.normalization == "none":
            return min_norm_weights(gram, tol=self.tol, max_iter=self.max_iter)
        norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
        norms = np.where(norms > 0, norms, 1.0)  # a zero gradient stays zero
        weights = min_norm_weights(gram / np.outer(norms, norms), tol=self.tol, max_iter=self.max_iter)
        return weights / norms
