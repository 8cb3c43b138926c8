"""CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent.

With g0 the mean gradient and g_w = sum_i w_i g_i, solve the dual over the simplex
    min_w  g_w . g0 + c |g0| |g_w|
and return d = g0 + (c |g0| / |g_w|) g_w, optionally rescaled by 1/(1+c^2) or 1/(1+c).
Everything the dual needs is in the K x K Gram matrix A = G G^T:
g_w . g0 = w^T A 1 / K, |g_w|^2 = w^T A w, |g0|^2 = mean(A). It is solved to high accuracy
in float64 on the host (K <= 50, so the copy is tiny) with accelerated projected gradient and
backtracking, warm-started from the previous solution; the published code instead takes 21
SGD steps on softmax logits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mtrl_famo.balancers.base import HostGramMixing
from mtrl_famo.balancers.registry import register

RESCALES = (0, 1, 2)


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    index = np.arange(1, v.size + 1)
    rho = np.nonzero(u - cumulative / index > 0)[0][-1]
    return np.maximum(v - cumulative[rho] / (rho + 1.0), 0.0)


def cagrad_objective(w: np.ndarray, gram: np.ndarray, c: float) -> float:
    """The dual objective g_w . g0 + c |g0| |g_w| written with the Gram matrix."""
    g0_norm = math.sqrt(max(gram.mean(), 0.0))
    return float(w @ gram.mean(axis=1) + c * g0_norm * math.sqrt(max(w @ gram @ w, 0.0)))


def solve_cagrad_dual(gram: np.ndarray, c: float, start: np.ndarray | None, *, max_iter: int, tol: float) -> np.ndarray:
    """Minimiser of `cagrad_objective` over the simplex (FISTA with backtracking and restart).

    Stops when the Frank-Wolfe gap, a certified bound on `f(w) - f*`, is below
    `tol * (|f(w)| + mean|A|)`, when 20 iterations in a row improve f by no more than
    rounding, or after `max_iter` iterations.
    """
    k = gram.shape[0]
    linear = gram.mean(axis=1)
    kappa = c * math.sqrt(max(gram.mean(), 0.0))

    def value(w: np.ndarray) -> float:
        return float(w @ linear + kappa * math.sqrt(max(w @ gram @ w, 0.0) + 1e-30))

    def gradient(w: np.ndarray) -> np.ndarray:
        aw = gram @ w
        return linear + kappa * aw / math.sqrt(max(w @ aw, 0.0) + 1e-30)

    w = project_to_simplex(start) if start is not None else np.full(k, 1.0 / k)
    y, momentum, current = w.copy(), 1.0, value(w)
    scale = float(np.abs(gram).mean())
    lipschitz = max(float(np.abs(gram).max()), 1e-30) / k
    stalled = 0
    for _ in range(max_iter):
        grad_w = gradient(w)
        if grad_w @ w - grad_w.min() <= tol * (abs(current) + scale) or stalled >= 20:
            break
        grad_y, value_y = gradient(y), value(y)
        while True:
            candidate = project_to_simplex(y - grad_y / lipschitz)
            step = candidate - y
            candidate_value = value(candidate)
            if candidate_value <= value_y + grad_y @ step + 0.5 * lipschitz * (step @ step) + 1e-15 * abs(value_y):
                break
            lipschitz *= 2.0
        stalled = stalled + 1 if candidate_value > current - 1e-15 * (abs(current) + scale) else 0
        if candidate_value > current:  # momentum overshot: restart from the best point
            y, momentum = w.copy(), 1.0
            continue
        next_momentum = (1.0 + math.sqrt(1.0 + 4.0 * momentum**2)) / 2.0
        y = candidate + ((momentum - 1.0) / next_momentum) * (candidate - w)
        w, current, momentum = candidate, candidate_value, next_momentum
        lipschitz *= 0.9
    return w


@register("cagrad")
class CAGrad(HostGramMixing):
    """Conflict-averse update direction; c=0 gives the mean gradient (MT-SAC)."""

    def __init__(self, num_tasks: int, *, c: float, rescale: int, max_iter: int, tol: float):
        super().__init__(num_tasks)
        if c < 0:
            raise ValueError(f"CAGrad c must be non-negative, got {c}.")
        if rescale not in RESCALES:
            raise ValueError(
                f"Unknown CAGrad rescale {rescale}; choose 0 (none), 1 (divide by 1+c^2) or 2 (divide by 1+c)."
            )
        self.c = float(c)
        self.rescale = int(rescale)
        self.max_iter = max_iter
        self.tol = tol
        self.last_weights = np.full(num_tasks, 1.0 / num_tasks)

    def mixing_weights_numpy(self, gram: np.ndarray) -> np.ndarray:
        """m with d = m @ G: 1/K + (c |g0| / |g_w|) w, then the rescale (the dual is solved on the host)."""
        k = gram.shape[0]
        mixing = np.full(k, 1.0 / k)
        if self.c > 0:
            w = solve_cagrad_dual(gram, self.c, self.last_weights, max_iter=self.max_iter, tol=self.tol)
            self.last_weights = w
            g0_norm = math.sqrt(max(gram.mean(), 0.0))
            gw_norm = math.sqrt(max(w @ gram @ w, 0.0))
            mixing = mixing + (self.c * g0_norm / (gw_norm + 1e-8)) * w
        if self.rescale == 1:
            mixing /= 1.0 + self.c**2
        elif self.rescale == 2:
            mixing /= 1.0 + self.c
        return mixing

    def state_dict(self) -> dict[str, Any]:
        return {"last_weights": self.last_weights.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_weights = np.asarray(state["last_weights"], dtype=np.float64)
