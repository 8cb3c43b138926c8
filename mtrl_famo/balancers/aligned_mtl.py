"""Aligned-MTL (Senushkin et al., CVPR 2023, "Independent Component Alignment for Multi-Task Learning").

With the Gram matrix A = G G^T = V Lambda V^T, the task gradients are replaced by the aligned ones

    G_hat = B G,   B = sqrt(s) V Lambda^{-1/2} V^T   (symmetric, so G_hat^T = G^T B),

whose rows are mutually orthogonal with equal norms sqrt(s): G_hat G_hat^T = B A B = s I, i.e. the
condition number of the aligned system is 1. The update is their sum with unit task pre-weights,
d = G^T B 1, so m = B 1. s is the smallest eigenvalue kept (`scale_mode: min`, the paper's and
the official code's default); the official code also offers the (lower) median eigenvalue and
the mean eigenvalue ('rmse': sqrt(s) = root mean square singular value).

Rank: as in the official code (SamsungLabs/MTL ProcrustesSolver, copied by LibMTL), eigenvalues
at or below `eig_rtol * K * lambda_max` are treated as zero and their eigenvectors dropped, so
with r eigenvalues kept B = sqrt(s) V_r Lambda_r^{-1/2} V_r^T and B A B = s V_r V_r^T: the aligned
gradients have all r singular values equal to sqrt(s) (K > r vectors cannot be orthogonal, but
they are a tight frame of the kept subspace). The published tolerance is float32's epsilon
(torch.finfo() of the default dtype), which is the default here too: the Gram matrix of float32
gradients carries errors of that relative size.

Degenerate inputs: identical gradients (A = a 1 1^T, rank 1) give B = 1 1^T / K, m = 1, d = K g
(the sum, as for any rank-1 set of equal vectors); a zero task gradient spans a dropped
eigenvector, so it gets m_i = 0 and the other tasks are aligned among themselves; all gradients
zero (nothing kept) -> m = 0, d = 0; K = 1 -> m = [1]. The Aligned-MTL-UB variant (gradients
with respect to the shared representation) is out of scope.
"""

from __future__ import annotations

import numpy as np

from mtrl_famo.balancers.base import HostGramMixing
from mtrl_famo.balancers.registry import register

SCALE_MODES = ("min", "median", "rmse")


def alignment_matrix(gram: np.ndarray, *, scale_mode: str, eig_rtol: float) -> np.ndarray:
    """B = sqrt(s) V_r Lambda_r^{-1/2} V_r^T from a float64 numpy Gram matrix (zeros if nothing is kept)."""
    k = gram.shape[0]
    eigenvalues, vectors = np.linalg.eigh(0.5 * (gram + gram.T))  # ascending
    largest = float(eigenvalues[-1])
    if not largest > 0:
        return np.zeros((k, k))
    kept = eigenvalues > eig_rtol * k * largest
    eigenvalues, vectors = eigenvalues[kept], vectors[:, kept]
    if scale_mode == "min":
        scale = eigenvalues[0]
    elif scale_mode == "median":
        scale = eigenvalues[(eigenvalues.size - 1) // 2]  # torch.median: the lower middle value
    else:
        scale = eigenvalues.mean()
    return (vectors * np.sqrt(scale / eigenvalues)) @ vectors.T


@register("aligned_mtl")
class AlignedMTL(HostGramMixing):
    """Sum of the task gradients after aligning them to an orthogonal, equal-norm system."""

    def __init__(self, num_tasks: int, *, scale_mode: str, eig_rtol: float):
        super().__init__(num_tasks)
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"Unknown Aligned-MTL scale_mode '{scale_mode}'; choose one of {', '.join(SCALE_MODES)}.")
        if not 0 <= eig_rtol < 1:
            raise ValueError(f"Aligned-MTL eig_rtol must be in [0, 1), got {eig_rtol}.")
        self.scale_mode = scale_mode
        self.eig_rtol = float(eig_rtol)

    def mixing_weights_numpy(self, gram: np.ndarray) -> np.ndarray:
        """`mixing_weights` on a float64 numpy Gram matrix: m = B 1 (the eigenproblem is solved on the host)."""
        return alignment_matrix(gram, scale_mode=self.scale_mode, eig_rtol=self.eig_rtol).sum(axis=1)
