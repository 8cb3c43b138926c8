"""The SAC agent's balanced backward, and the conflict statistics of one update's task gradients.

`balanced_backward` is the public `mtrl_famo.balancers.backward_grouped` with the agent's rule for
task-specific parameters (`agents.networks.is_task_specific`); the maths lives there only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.balancers.backprop import BackwardResult, backward_grouped
from mtrl_famo.balancers.base import Balancer
from mtrl_famo.task_gradients import LossFn

__all__ = ["BackwardResult", "ConflictStats", "balanced_backward", "conflict_stats", "conflict_stats_from_gram"]


def balanced_backward(
    agent: nn.Module,
    loss_fn: LossFn,
    data: tuple[torch.Tensor, ...],
    params: dict[str, nn.Parameter],
    balancer: Balancer,
) -> BackwardResult:
    """Set `.grad` of `params` (names as in `agent.named_parameters()`); gradients are replaced.

    Loss weighting: one ordinary backward of `balancer.weighted_loss(losses)`.
    Gradient manipulation: shared parameters get `balancer.combine(G)` of the `[K, D]` per-task
    gradients; task-specific parameters get the gradient of the mean loss (task k's own
    gradient / K), so that a conflict-free PCGrad or CAGrad with c=0 equals MT-SAC exactly.
    """
    return backward_grouped(agent, loss_fn, data, balancer, params=params, task_axis=is_task_specific)


@dataclass
class ConflictStats:
    """Pairwise cosine picture of the `[K, D]` task gradients of one update (0-d device tensors)."""

    FIELDS: ClassVar[tuple[str, ...]] = ("cosine_min", "cosine_mean", "conflicting_pairs")

    cosine_min: torch.Tensor
    cosine_mean: torch.Tensor
    conflicting_pairs: torch.Tensor  # number of task pairs whose gradients have a negative dot product


def conflict_stats_from_gram(gram: torch.Tensor) -> ConflictStats:
    """Min and mean pairwise cosine and the number of conflicting pairs, from the `[K, K]` Gram matrix."""
    num_tasks = gram.shape[0]
    norms = gram.diagonal().clamp_min(1e-20).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :])
    upper = torch.triu_indices(num_tasks, num_tasks, offset=1, device=cosine.device)
    pairs = cosine[upper[0], upper[1]]
    if pairs.numel() == 0:
        pairs = torch.ones(1, device=cosine.device)
    return ConflictStats(pairs.min(), pairs.mean(), (pairs < 0).sum().to(torch.float32))


def conflict_stats(shared_grads: torch.Tensor) -> ConflictStats:
    """`conflict_stats_from_gram` of `[K, D]` task gradients."""
    return conflict_stats_from_gram(shared_grads @ shared_grads.T)
