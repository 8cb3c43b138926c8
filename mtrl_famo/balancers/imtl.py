"""IMTL-G (Liu et al., ICLR 2021, "Towards Impartial Multi-task Learning"): equal projections.

The update d = m^T G has the same projection on every unit task gradient u_i = g_i / |g_i|,

    d . u_i = d . u_j  for all i, j,     sum_i m_i = 1   (the paper's normalisation).

The paper solves it with task 1 as reference: with D = [g_1 - g_2; ...; g_1 - g_K] and
U = [u_1 - u_2; ...], alpha_{2..K} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2..K}.
Every inner product in there is an entry of the Gram matrix A = G G^T (g_i . u_j = A_ij / |g_j|,
|g_i| = sqrt(A_ii)), so it is solved in K x K space, in float64 on the host. Written symmetrically
in the tasks: d . u_i = (N A m)_i with N = diag(1/|g_i|), so the conditions are

    P N A m = 0   (P = I - 1 1^T / K: all projections equal),     1^T m = 1,

a (K+1) x K linear system with exactly the paper's solution set. It is solved by least squares
(numpy lstsq, singular values below `rcond` times the largest treated as zero; the first block is
divided by max |g_i| so the system is unit-free). When the paper's D U^T is invertible the
solution is unique and this IS the paper's alpha (to rounding). When it is not (identical or
parallel gradients, K > D), the minimum-norm solution is returned, i.e. the m closest to uniform
among those with equal projections: identical task gradients get equal weights; parallel ones
give the mean (MT-SAC); if no m meets both conditions, the least-squares compromise (finite, no
NaN). The published code (SamsungLabs/MTL, nash-mtl) calls torch.inverse in float32 and adds
1e-8 I when that fails.

Degenerate inputs: a task with a zero gradient has no unit gradient; it is left out of the
conditions and gets m_i = 0 (its gradient adds nothing whatever its weight). All gradients zero
-> m = 1/K (d = 0). K = 1 -> m = [1].

Only IMTL-G is implemented; IMTL-L (learned loss scales, which LibMTL's IMTL adds) is not.
"""

from __future__ import annotations

import numpy as np

from mtrl_famo.balancers.base import HostGramMixing
from mtrl_famo.balancers.registry import register


def imtl_weights(gram: np.ndarray, *, rcond: float) -> np.ndarray:
    """IMTL-G's m from a float64 numpy Gram matrix (see the module docstring for the rules)."""
    k = gram.shape[0]
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    live = np.nonzero(norms > 0)[0]
    if live.size == 0:
        return np.full(k, 1.0 / k)
    weights = np.zeros(k)
    if live.size == 1:
        weights[live] = 1.0
        return weights
    block, live_norms = gram[np.ix_(live, live)], norms[live]
    projections = block / live_norms[:, None] / live_norms.max()  # (N A)_ij = u_i . g_j, unit-free
    count = live.size
    system = np.vstack([projections - projections.mean(axis=0), np.full((1, count), 1.0 / np.sqrt(count))])
    rhs = np.zeros(count + 1)
    rhs[count] = 1.0 / np.sqrt(count)
    weights[live] = np.linalg.lstsq(system, rhs, rcond=rcond)[0]
    return weights


@register("imtl")
class IMTLG(HostGramMixing):
    """Impartial update: equal projection of d on every unit task gradient, weights summing to 1."""

    def __init__(self, num_tasks: int, *, rcond: float):
        super().__init__(num_tasks)
        if not 0 <= rcond < 1:
            raise ValueError(f"IMTL rcond must be in [0, 1), got {rcond}.")
        self.rcond = float(rcond)

    def mixing_weights_numpy(self, gram: np.ndarray) -> np.ndarray:
        """`mixing_weights` on a float64 numpy Gram matrix (the system is solved on the host)."""
        return imtl_weights(gram, rcond=self.rcond)
