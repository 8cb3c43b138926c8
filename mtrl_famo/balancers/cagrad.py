"""CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent.

The paper's problem: with g0 the mean gradient and the ball B = {d : |d - g0| <= c |g0|},

    max_{d in B} min_i g_i . d                                              (primal)
    min_{w in simplex} h(w) = g_w . g0 + c |g0| |g_w|,  g_w = sum_i w_i g_i   (dual)

and d = g0 + (c |g0| / |g_w|) g_w for the dual optimum w, optionally divided by 1 + c^2 or 1 + c.
What the exact d guarantees (the property tests check these): d is in B; every task's directional
derivative is at least the optimal worst case F* (g_i . d >= F* = h(w)); for c >= 1 the origin is in
B, so F* >= 0 and no task conflicts with d (g_i . d >= 0 for all i, hence d . g0 >= 0). For c < 1 a
task may conflict with d (F* < 0 when no direction in B helps every task); d . g0 >= (1 - c)|g0|^2.

Solver. Everything the dual needs is in the K x K Gram matrix A = G G^T (g_w . g0 = w^T A 1 / K,
|g_w|^2 = w^T A w, |g0|^2 = mean(A)); it is solved in float64 on the host by an active-set method,
CAGrad's analogue of Wolfe's minimum-norm-point algorithm. On a support S the minimiser of h over the
affine hull {w : w_i = 0 off S, sum w = 1} is closed-form: with w_a the weights of the minimum-norm
point of the affine hull of g_S (|g_{w_a}|^2 = nu) and w_b the sum-zero weights with
A_S w_b = mu 1 - (A 1 / K)_S (|g_{w_b}|^2 = beta), g_{w_a} is orthogonal to every sum-zero
combination, so the minimiser is w = w_a + t w_b, t = sqrt(nu / (kappa^2 - beta)), kappa = c |g0|
(if kappa^2 <= beta, h is unbounded below along w_b). Minor cycles move towards it and drop the task
whose weight reaches zero; a major cycle adds the task whose g_j . d falls furthest below h(w). The
linear algebra runs on the cosine matrix A_ij / (|g_i| |g_j|), so gradient norms that differ by
orders of magnitude (1e6 and more) cost no accuracy. It stops when every task's g_j . d is at least
h(w) - tol |g_j| (1 + c) |g0|, a certificate (h(w) >= F*): each task gets within that of the best
achievable worst case; or after `max_iter` cycles (a solve takes a few; about 50 at most were seen at
K = 50). It starts from the previous solution's support. The published code instead takes 21 SGD
steps on softmax logits.

When g_w = 0 at the optimum. The origin is then in the convex hull of the task gradients and B
reaches the cone C = {d : g_i . d >= 0 for all i} (always so for c >= 1 when the origin is in the
hull): F* = 0, every d in B with g_i . d >= 0 for all i is optimal, and the paper's formula is 0/0.
Then d is the optimal direction closest to g0, the projection of g0 onto C:
d = g0 + G^T lambda with lambda >= 0 minimising |g0 + G^T lambda| (non-negative least squares on the
Gram matrix); it is in B because some point of C is. (No choice is continuous there: as the origin
approaches the hull from outside, the paper's d stays on the sphere and its limit depends on the
direction of approach; the projection is the optimum that departs least from the mean gradient, the
point B is centred on.) "g_w = 0" means below what the Gram matrix resolves:
|g_w|^2 <= factor * resolution * (sum_i w_i |g_i|)^2, resolution = eps(dtype) sqrt(D)
(`gram_resolution`, the rounding of a Gram matrix formed in the gradients' dtype). Near that
boundary d is only as accurate as the Gram matrix: its shortfall is of the order of
sqrt(resolution) relative (about 1e-3 for float32 gradients, 1e-7 for float64).

Where the gradients are at hand (`combine`), the norms are measured on the vectors, not on the
rounded Gram matrix: with g_a = G^T w_a and g_b = G^T w_b, t and |g_w| are recomputed from |g_a|,
|g_b| and |g0| and d = g0 + (c |g0| / |g_w|) g_w (in the case g_w = 0, d = g0 + s G^T lambda with
s = min(1, c |g0| / |G^T lambda|)). So d is in B up to the rounding of a vector sum for any input,
and scales exactly with G. `mix(gram)` alone (for callers that never stack [K, D]) takes every norm
from the Gram matrix: d is then in B up to the Gram matrix's resolution.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg import lapack
from scipy.optimize import nnls

from mtrl_famo.balancers.base import HostGramMixing
from mtrl_famo.balancers.registry import register

RESCALES = (0, 1, 2)
ASSUMED_LENGTH = 1_000_000  # gradient length assumed when only the Gram matrix is known (a 3 x 400 MLP's size)
# |g_w| counts as zero below sqrt(factor * resolution) * sum_i w_i |g_i|. With the vectors at hand (`combine`)
# |g_w| is measured on them and the factor only trades the two sides' errors near the origin (both about
# sqrt(resolution) relative there); with the Gram matrix alone (`mix`) a larger factor bounds |d - g0| / (c|g0|)
# by sqrt(1 + 1/factor) where the Gram matrix's |g_w| is off by its whole resolution.
DEGENERATE_WITH_VECTORS = 1.0
DEGENERATE_GRAM_ONLY = 100.0


def gram_resolution(dtype: torch.dtype, length: int | None) -> float:
    """Relative rounding error of a Gram matrix formed in `dtype` over vectors of `length` entries:
    |A_ij error| <= resolution |g_i| |g_j| (the usual sqrt(length) growth of a dot product's rounding)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps
    return max(float(eps), float(torch.finfo(torch.float64).eps)) * math.sqrt(max(length or ASSUMED_LENGTH, 1))


@dataclass
class DualSolution:
    """The solve's result. `weights`: w on the simplex (the next solve's warm start). Regular case
    (g_w != 0): `pair` = [w_a, w_b] of the optimal support and `step` t, w = w_a + t w_b, so that
    `combine` can recompute t and |g_w| from the vectors. Case g_w = 0: `cone` = lambda, d = g0 + G^T lambda.
    Neither (the cycle cap ran out): d = g0 + c|g0| g_w / |g_w| with the current w."""

    weights: np.ndarray
    pair: np.ndarray | None = None
    step: float = 0.0
    cone: np.ndarray | None = None
    converged: bool = True
    cycles: int = 0


class _Dual:
    """The dual on the Gram matrix scaled to max diagonal 1 (scale-free), with its linear algebra."""

    def __init__(self, gram: np.ndarray, c: float, resolution: float, degenerate: float, tol: float):
        self.a = gram
        self.k = gram.shape[0]
        self.norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
        self.linear = gram.mean(axis=1)  # b_i = g_i . g0
        self.g0_norm = math.sqrt(max(float(self.linear.mean()), 0.0))
        self.kappa = c * self.g0_norm
        self.resolution = resolution
        self.degenerate = degenerate
        self.tol = tol
        self._pairs: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, float, float]] = {}  # `affine_pair`

    def value(self, w: np.ndarray) -> tuple[float, float]:
        """(h(w), |g_w|)."""
        rho = math.sqrt(max(float(w @ self.a @ w), 0.0))
        return float(w @ self.linear) + self.kappa * rho, rho

    def is_degenerate(self, w: np.ndarray, rho: float) -> bool:
        """Whether |g_w| is below what the Gram matrix resolves (relative to the tasks it mixes)."""
        return rho**2 <= self.degenerate * float(np.abs(w) @ self.norms) ** 2

    def affine_pair(self, support: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(w_a, w_b, nu, beta) on the support: see the module docstring. Solved once per support (the
        last minor cycle and the converged solution ask for the same one); callers only read it."""
        key = tuple(support.tolist())
        if key not in self._pairs:
            self._pairs[key] = self._solve_affine_pair(support)
        return self._pairs[key]

    def _solve_affine_pair(self, support: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        """`affine_pair`, solved on the cosine matrix with the border scaled to at most 1 (affinely
        dependent supports, e.g. repeated gradients, get the minimum-norm solution)."""
        norms = self.norms[support]
        cosine = self.a[np.ix_(support, support)] / np.outer(norms, norms)
        smallest = float(norms.min())
        border = smallest / norms
        size = support.size
        bordered = np.zeros((size + 1, size + 1))
        bordered[:size, :size] = cosine
        bordered[:size, size] = border
        bordered[size, :size] = border
        rhs = np.zeros((size + 1, 2))
        rhs[size, 0] = smallest  # 1^T w_a = 1
        rhs[:size, 1] = -self.linear[support] / norms  # A w_b + x 1 = -b
        solution = _solve(bordered, rhs, self.resolution)
        w_a = solution[:size, 0] / norms
        w_b = solution[:size, 1] / norms
        total = w_a.sum()
        w_a = w_a / total if total != 0 else np.full(size, 1.0 / size)
        w_b = w_b - w_b.sum() * w_a  # keep sum w_b = 0 (A w_a is constant on the support)
        z_a, z_b = w_a * norms, w_b * norms
        return w_a, w_b, max(float(z_a @ cosine @ z_a), 0.0), max(float(z_b @ cosine @ z_b), 0.0)

    def shortfall(self, w: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
        """Per task: (h(w) - g_j . d) / |g_j| and the certificate's allowance (tol plus rounding)."""
        value = float(w @ self.linear) + self.kappa * rho
        derivative = self.linear + self.kappa * (self.a @ w) / rho
        live = self.norms > 0
        scale = self.g0_norm + self.kappa
        shortfall = np.where(live, (value - derivative) / np.where(live, self.norms, 1.0), -np.inf)
        mixed = float(np.abs(w) @ self.norms)
        rounding = 64 * np.finfo(np.float64).eps * self.k * (mixed / np.where(live, self.norms, 1.0) + 1.0)
        return shortfall, (self.tol + rounding) * scale

    def cone_projection(self) -> np.ndarray:
        """lambda >= 0 minimising |g0 + G^T lambda|: g0 + G^T lambda is the projection of g0 onto
        {d : g_i . d >= 0 for all i}. Solved as non-negative least squares on the cosine matrix."""
        live = np.nonzero(self.norms > 0)[0]
        correction = np.zeros(self.k)
        if live.size == 0:
            return correction
        norms = self.norms[live]
        cosine = self.a[np.ix_(live, live)] / np.outer(norms, norms)
        values, vectors = np.linalg.eigh(0.5 * (cosine + cosine.T))
        root = (vectors * np.sqrt(np.clip(values, 0.0, None))).T  # cosine = root^T root
        try:
            scaled = nnls(root, -root @ (norms / self.k), maxiter=50 * live.size)[0]
        except RuntimeError:  # Lawson-Hanson out of iterations (rounding): d = g0, the ball's centre
            return correction
        correction[live] = scaled / norms
        return correction


def _solve(matrix: np.ndarray, rhs: np.ndarray, rcond: float) -> np.ndarray:
    """matrix^-1 rhs by LU when LAPACK's condition estimate is above `rcond` (ten times cheaper than an
    SVD at K = 50), else the minimum-norm least-squares solution with singular values below rcond cut."""
    factors, _, info = lapack.dgetrf(matrix)
    if info == 0:
        estimate, info = lapack.dgecon(factors, float(np.abs(matrix).sum(axis=0).max()), norm="1")
        if info == 0 and estimate > rcond:
            return np.linalg.solve(matrix, rhs)
    return np.linalg.lstsq(matrix, rhs, rcond=rcond)[0]


def solve_cagrad_dual(
    gram: np.ndarray,
    c: float,
    start: np.ndarray | None,
    *,
    resolution: float,
    degenerate: float,
    tol: float,
    max_iter: int,
) -> DualSolution:
    """CAGrad's dual and the data of its primal d on a float64 Gram matrix (see the module docstring).

    `start`: previous weights (their support is the first guess) or None. `resolution`: the Gram
    matrix's relative rounding error (`gram_resolution`); |g_w|^2 <= degenerate (sum_i w_i |g_i|)^2
    counts as g_w = 0. Always returns finite weights on the simplex; `converged` is False only when
    `max_iter` cycles ran out.
    """
    k = gram.shape[0]
    uniform = np.full(k, 1.0 / k)
    symmetric = 0.5 * (gram + gram.T)
    top = float(np.max(np.diag(symmetric))) if k else 0.0
    if not np.isfinite(symmetric).all() or not top > 0 or c == 0:
        return DualSolution(uniform, cone=np.zeros(k))  # all gradients zero (or c = 0): d = g0
    dual = _Dual(symmetric / top, c, resolution, degenerate, tol)
    if dual.kappa == 0:
        return DualSolution(uniform, cone=np.zeros(k))  # g0 = 0: the ball is {g0}

    w, cycles = _first_weights(dual, start, max_iter)
    rejected = -1  # a task added by the last major cycle that could not keep any weight
    while cycles < max_iter:
        cycles += 1
        value, rho = dual.value(w)
        if dual.is_degenerate(w, rho):
            cone = dual.cone_projection()
            if c >= 1 or float(cone @ dual.a @ cone) <= dual.kappa**2 * (1 + math.sqrt(resolution)):
                return DualSolution(w, cone=cone, cycles=cycles)  # F* = 0, attained at g_w = 0
            w = cone / cone.sum()  # h(w) < 0 there: F* < 0, continue from it
            w, cycles = _minor_cycles(dual, w, cycles, max_iter)
            continue
        shortfall, allowed = dual.shortfall(w, rho)
        shortfall[w > 0] = -np.inf
        j = int(np.argmax(shortfall / allowed))
        if shortfall[j] <= allowed[j] or j == rejected:
            return _regular(dual, w, cycles)
        trial, cycles = _minor_cycles(dual, w, cycles, max_iter, entering=j)
        if trial[j] <= 0 and dual.value(trial)[0] >= value:
            rejected = j  # rounding: the task cannot enter, the current support is as good as it gets
        w = trial
    if dual.is_degenerate(w, dual.value(w)[1]):
        return DualSolution(w, cone=dual.cone_projection(), converged=False, cycles=cycles)
    return DualSolution(w, converged=False, cycles=cycles)


def _regular(dual: _Dual, w: np.ndarray, cycles: int) -> DualSolution:
    """The converged regular solution with its support's pair (w_a, w_b) and step t."""
    support = np.nonzero(w > 0)[0]
    w_a, w_b, nu, beta = dual.affine_pair(support)
    pair = np.zeros((2, dual.k))
    pair[0, support], pair[1, support] = w_a, w_b
    step = math.sqrt(nu / (dual.kappa**2 - beta)) if dual.kappa**2 > beta else 0.0
    if np.max(np.abs(pair[0] + step * pair[1] - w)) > 1e-9:  # w is not its support's minimiser (a safety exit)
        return DualSolution(w, cycles=cycles)
    return DualSolution(w, pair=pair, step=step, cycles=cycles)


def _first_weights(dual: _Dual, start: np.ndarray | None, max_iter: int) -> tuple[np.ndarray, int]:
    """The minimiser over the previous weights' support when usable (often still the optimal
    support), else the best vertex; with the cycles spent."""
    if start is not None and start.shape == (dual.k,) and np.isfinite(start).all() and (start >= 0).all():
        live = np.where(dual.norms > 0, start, 0.0)
        if live.sum() > 0:
            return _minor_cycles(dual, live / live.sum(), 0, max_iter)
    w = np.zeros(dual.k)
    w[int(np.argmin(dual.linear + dual.kappa * dual.norms))] = 1.0
    return w, 0


def _minor_cycles(
    dual: _Dual, w: np.ndarray, cycles: int, max_iter: int, entering: int | None = None
) -> tuple[np.ndarray, int]:
    """Move w (on the simplex) to the minimiser of h over the affine hull of its support (plus
    `entering`), dropping tasks whose weight reaches zero on the way; h never increases."""
    support = np.nonzero(w > 0)[0]
    if entering is not None:
        support = np.append(support, entering)
    current = w[support].copy()
    while cycles < max_iter:
        cycles += 1
        w_a, w_b, nu, beta = dual.affine_pair(support)
        norms = dual.norms[support]
        degenerate = nu <= dual.degenerate * float(np.abs(w_a) @ norms) ** 2
        if dual.kappa**2 > beta:
            step = 0.0 if degenerate else math.sqrt(nu / (dual.kappa**2 - beta))
            target = w_a + step * w_b
            if (target > 0).all():
                current = target
                break
            direction = target - current
        else:
            direction = w_b  # h is unbounded below along this ray of the hull: go to the simplex's edge
        shrinking = direction < 0
        if not shrinking.any():
            break
        ratios = current[shrinking] / -direction[shrinking]
        theta = float(ratios.min())
        current = np.clip(current + theta * direction, 0.0, None)
        current[np.nonzero(shrinking)[0][int(np.argmin(ratios))]] = 0.0
        keep = current > 0
        if not keep.any():
            break
        support, current = support[keep], current[keep] / current[keep].sum()
    full = np.zeros(dual.k)
    full[support] = current
    return full / full.sum(), cycles


def _norm_of_parts(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Euclidean norm of the vector cut into `parts`, accumulated in float64 (0-d, on their device)."""
    return functools.reduce(
        torch.add, (torch.linalg.vector_norm(part, dtype=torch.float64) ** 2 for part in parts)
    ).sqrt()


@register("cagrad")
class CAGrad(HostGramMixing):
    """Conflict-averse update direction; c=0 gives the mean gradient (MT-SAC)."""

    def __init__(self, num_tasks: int, *, c: float, rescale: int, max_iter: int, tol: float):
        super().__init__(num_tasks)
        if not c >= 0:
            raise ValueError(f"CAGrad c must be non-negative, got {c}.")
        if rescale not in RESCALES:
            raise ValueError(
                f"Unknown CAGrad rescale {rescale}; choose 0 (none), 1 (divide by 1+c^2) or 2 (divide by 1+c)."
            )
        if max_iter < 1:
            raise ValueError(f"CAGrad max_iter must be at least 1, got {max_iter}.")
        if not tol > 0:
            raise ValueError(f"CAGrad tol must be positive, got {tol}.")
        self.c = float(c)
        self.rescale = int(rescale)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.last_weights = np.full(num_tasks, 1.0 / num_tasks)
        self.last_solution: DualSolution | None = None

    @property
    def divisor(self) -> float:
        """The rescale's divisor of d: 1, 1 + c^2 or 1 + c."""
        return (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]

    def solve(self, gram: np.ndarray, resolution: float, degenerate_factor: float) -> DualSolution:
        """The dual on a float64 Gram matrix, warm-started from (and updating) `last_weights`."""
        solution = solve_cagrad_dual(
            gram,
            self.c,
            self.last_weights,
            resolution=resolution,
            degenerate=degenerate_factor * resolution,
            tol=self.tol,
            max_iter=self.max_iter,
        )
        self.last_weights = solution.weights
        self.last_solution = solution
        return solution

    def gram_mixing(self, gram: np.ndarray, resolution: float) -> np.ndarray:
        """m with d = m @ G, every norm taken from the Gram matrix: (1/K + s v) / divisor with
        v = w (s = c|g0| / |g_w|) or v = lambda (s = min(1, c|g0| / |G^T lambda|))."""
        k = gram.shape[0]
        solution = self.solve(gram, resolution, DEGENERATE_GRAM_ONLY)
        direction = solution.weights if solution.cone is None else solution.cone
        length = math.sqrt(max(float(direction @ gram @ direction), 0.0))
        radius = self.c * math.sqrt(max(float(gram.mean()), 0.0))
        scale = radius / length if length > 0 else 0.0
        if solution.cone is not None:
            scale = min(scale, 1.0)
        return (np.full(k, 1.0 / k) + scale * direction) / self.divisor

    def mixing_weights_numpy(self, gram: np.ndarray) -> np.ndarray:
        """m with d = m @ G from a float64 numpy Gram matrix (the dual is solved on the host)."""
        return self.gram_mixing(gram, gram_resolution(torch.float64, None))

    def mix(self, gram: torch.Tensor) -> torch.Tensor:
        """Gram-only mixing weights (d is in the ball up to the Gram matrix's resolution)."""
        mixing = self.gram_mixing(gram.double().cpu().numpy(), gram_resolution(gram.dtype, None))
        self.last_mix = torch.as_tensor(mixing, device=gram.device).to(gram)
        return self.last_mix

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        """d with every norm measured on the vectors (see the module docstring): in the ball up to the
        rounding of a vector sum, and |g_w| exact even where the Gram matrix cannot resolve it."""
        return self.combine_blocks([grads])[0][0]

    def combine_blocks(self, blocks: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """`combine` on J as `[K, n_i]` column blocks, never stacked: the Gram matrix is summed block by
        block, then g0 and the one or two solution vectors come out of one `[<=3, K] @ block` product
        per block (two passes over J in all, as a Gram-space method), and every norm is summed over the
        blocks' parts of those vectors in float64."""
        first = blocks[0]
        k, dtype, device = first.shape[0], first.dtype, first.device
        gram = functools.reduce(torch.add, (block @ block.T for block in blocks))
        mean_row = torch.full((1, k), 1.0 / k, dtype=dtype, device=device)
        if self.c == 0:
            self.last_mix = (mean_row[0] / self.divisor).to(dtype)
            return [self.last_mix @ block for block in blocks], gram
        length = sum(block.shape[1] for block in blocks)
        solution = self.solve(gram.double().cpu().numpy(), gram_resolution(dtype, length), DEGENERATE_WITH_VECTORS)
        if solution.pair is not None:  # the paper's d; t and |g_w| recomputed from the vectors
            pair = torch.as_tensor(solution.pair, device=device)
            rows = torch.cat([mean_row, pair.to(dtype)])
        else:
            weights = torch.as_tensor(solution.weights if solution.cone is None else solution.cone, device=device)
            rows = torch.cat([mean_row, weights.to(dtype)[None]])
        parts = [rows @ block for block in blocks]  # row 0: g0; then g_a, g_b (pair) or the direction
        g0 = [part[0] for part in parts]
        radius = self.c * _norm_of_parts(g0)
        if solution.pair is not None:
            g_a, g_b = [part[1] for part in parts], [part[2] for part in parts]
            room = radius**2 - _norm_of_parts(g_b) ** 2
            step = torch.where(room > 0, _norm_of_parts(g_a) / room.clamp_min(1e-300).sqrt(), solution.step)
            weights = pair[0] + step * pair[1]
            direction = [a + step.to(dtype) * b for a, b in zip(g_a, g_b)]
        else:
            direction = [part[1] for part in parts]
        length_of_direction = _norm_of_parts(direction)
        scale = torch.where(length_of_direction > 0, radius / length_of_direction.clamp_min(1e-300), 0.0)
        if solution.cone is not None:
            scale = scale.clamp_max(1.0)
        self.last_mix = ((1.0 / k + scale * weights) / self.divisor).to(dtype)
        return [(base + scale.to(dtype) * part) / self.divisor for base, part in zip(g0, direction)], gram

    def state_dict(self) -> dict[str, Any]:
        return {"last_weights": self.last_weights.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_weights = np.asarray(state["last_weights"], dtype=np.float64)
