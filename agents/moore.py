"""MOORE: Mixture Of ORthogonal Experts (Hendawy, Peters, D'Eramo, ICLR 2024).

k shared expert MLPs read the observation; per sample their k output vectors are made orthonormal
by Gram-Schmidt; task tau mixes them with its own weight vector w_tau (the task encoder: a linear
map without bias of the one-hot task id, i.e. one row of k weights per task), tanh, then the
output layer (one per task in the multi-head MOORE used on Metaworld, or one shared head).

Checked against the authors' code (github.com/AhmedMagdyHendawy/MOORE, moore/utils/networks_sac.py
and run/metaworld/*moore.sh: `--n_features 400 400 400 --activation Linear --agg_activation Linear
Tanh`, Xavier task encoder without bias, per-task linear heads) and Meta-World+'s JAX version
(github.com/rainx0r/metaworld-algorithms, metaworld_algorithms/nn/moore.py): each expert is
`num_layers` linear layers of width `hidden_dim`, ReLU between them and none after the last; the
mixture goes through tanh; the head is linear. Gram-Schmidt is the classical form both use
(project on the whole basis so far, divide by norm + 1e-8).

Shapes: `task_weight` is `[K, 1, k]` (task axis first; one task's slice `[1, k]` under vmap), the
expert layers `[k, in, out]` are shared. Difference from the published code: the experts read
the whole input row (with the one-hot task id when the observation carries it) where the
published code strips the id off first.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from mtrl_famo.agents.networks import StackedLinear, add_head, head_output, init_task_vectors, reset_head

EPS = 1e-8  # Gram-Schmidt's norm + eps, as both published codes


def gram_schmidt_coefficients(gram: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Classical Gram-Schmidt run on the Gram matrix `G = V V^T` (`[*, k, k]`) of k vectors instead of
    on the vectors: the lower-triangular `T` (`[*, k, k]`) with basis `B = T V`.

    Step i is the classical step, eps included, written in the vectors' coordinates:
    `<b_j, v_i> = (T G)[j, i]`; `w_i = v_i - sum_{j<i} <b_j, v_i> b_j` has coordinates
    `u_i = e_i - sum_j <b_j, v_i> T[j]`; `|w_i|^2 = u_i G u_i^T`; `b_i = w_i / (|w_i| + eps)`. Only
    `[*, k, k]` tensors are touched. Give G in float64: the norms are then (a difference of squares)
    as accurate as float32 Gram-Schmidt on the vectors, or more (measured on nearly parallel
    vectors). A squared norm at or below 1e-300 (a vector in the span of the previous ones) is taken
    as 1e-300, which keeps its gradient finite; its basis vector is ~0 either way."""
    k = gram.shape[-1]
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    rows: list[torch.Tensor] = []  # row j: the coordinates of b_j
    for i in range(k):
        residual = eye[i]
        if rows:
            previous = torch.stack(rows, -2)  # [*, i, k]
            projection = (previous * gram[..., i, None, :]).sum(-1, keepdim=True)  # <b_j, v_i>, [*, i, 1]
            residual = residual - (projection * previous).sum(-2)  # [*, k]
        squared = ((residual.unsqueeze(-2) * gram).sum(-1) * residual).sum(-1, keepdim=True)  # |w_i|^2
        rows.append(residual / (squared.clamp_min(1e-300).sqrt() + eps))
    return torch.stack(rows, -2)


def _rows_and_coefficients(vectors: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`[k, N, d]` -> the rows `[N, k, d]` and the `gram_schmidt_coefficients` `[N, k, k]` (float64) of
    their Gram matrices."""
    rows = vectors.transpose(0, 1).contiguous()
    exact = rows.to(torch.float64)  # no copy when the vectors are float64 already
    return rows, gram_schmidt_coefficients(exact @ exact.mT, eps)


def gram_schmidt(vectors: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """`[k, N, d]` -> `[k, N, d]`: for each of the N rows, the k vectors made orthonormal in order by
    classical Gram-Schmidt (each vector minus its projections on the whole basis so far, divided by
    its norm + eps), computed as `T V` with `T` from `gram_schmidt_coefficients`: a handful of
    operations on the vectors (the Gram matrices, one batched matmul) instead of ~k^2 passes over
    them; the same function up to float rounding."""
    rows, coefficients = _rows_and_coefficients(vectors, eps)
    return (coefficients.to(vectors.dtype) @ rows).transpose(0, 1)


class MOORENetwork(nn.Module):
    """k orthogonalised shared experts mixed per task, tanh, then the head (per task or shared)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int,
        num_layers: int,
        num_tasks: int,
        *,
        shared_head: bool,
        init: str,
        layernorm: bool,
        num_experts: int,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"moore needs num_layers >= 1 (each expert's linear layers), got {num_layers}.")
        if num_experts < 1 or num_experts > hidden_dim:
            raise ValueError(
                f"moore needs 1 <= num_experts <= hidden_dim (k orthonormal vectors of size hidden_dim), "
                f"got num_experts={num_experts} with hidden_dim={hidden_dim}."
            )
        self.init = init
        widths = [in_dim] + [hidden_dim] * num_layers
        self.experts = nn.ModuleList(StackedLinear(num_experts, a, b, init) for a, b in pairwise(widths))
        # LayerNorm after each hidden linear (all but the last), before its ReLU; shared by the experts.
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(num_layers - 1)) if layernorm else None
        self.task_weight = nn.Parameter(torch.empty(num_tasks, 1, num_experts))
        self.head: nn.Linear | None
        add_head(self, hidden_dim, out_dim, num_tasks, shared_head=shared_head)
        self.reset_parameters(None)  # drawn from torch's global generator, as nn.Linear's are

    def reset_parameters(self, generator: torch.Generator | None) -> None:
        """Every parameter drawn again in place: experts and head with the `init` law of a linear map,
        the task weights as the weight of a linear map from the one-hot id (fan_in K, fan_out k)."""
        for layer in self.experts:
            layer.reset_parameters(generator)
        for norm in self.norms or ():
            norm.reset_parameters()
        init_task_vectors(self.task_weight, self.init, generator)
        reset_head(self, self.init, generator)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The raw expert outputs `[k, N, hidden]` of input `[*rows, in]` (rows flattened to N)."""
        h = x.reshape(-1, x.shape[-1])
        last = len(self.experts) - 1
        for i, layer in enumerate(self.experts):
            h = layer(h)  # [k, N, out], a fresh tensor: the in-place ReLU needs no copy in backward
            if i < last:
                if self.norms is not None:
                    h = self.norms[i](h)
                h = torch.relu_(h)
        return h

    def expert_basis(self, x: torch.Tensor) -> torch.Tensor:
        """The orthonormalised expert outputs `[k, *rows, hidden]` of input `[*rows, in]`."""
        basis = gram_schmidt(self.expert_outputs(x))
        return basis.view(basis.shape[0], *x.shape[:-1], basis.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]  # [K, B] (one task under vmap: [B])
        rows, coefficients = _rows_and_coefficients(self.expert_outputs(x), EPS)  # [N, k, h], [N, k, k]
        num_experts = coefficients.shape[-1]
        # sum_j w_tau[j] b_j = sum_j w_tau[j] sum_l T[j, l] v_l = (w_tau^T T) V: the task weights `[K, 1, k]`
        # (one task: `[1, k]`) go through T first (k x k work per row), then one batched matmul mixes
        # the raw expert outputs; the orthonormal basis itself is never formed.
        weights = self.task_weight.unsqueeze(-1).to(coefficients.dtype)  # [K, 1, k, 1]
        mix = (weights * coefficients.view(*lead, num_experts, num_experts)).sum(-2)  # [*lead, k]
        features = mix.to(rows.dtype).view(-1, 1, num_experts) @ rows  # [N, 1, h]
        features = torch.tanh_(features.view(*lead, -1))  # in place: tanh's backward reads its output only
        return head_output(self, features)
