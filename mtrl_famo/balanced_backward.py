"""Turn a per-task loss function into `.grad` on a parameter group through a balancer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.balancers.base import Balancer, GradientManipulation, LossWeighting
from mtrl_famo.task_gradients import LossFn, per_task_gradients


@dataclass
class BackwardResult:
    """Detached per-task losses `[K]`, the loss function's aux, and `[K, D]` shared grads if computed."""

    losses: torch.Tensor
    aux: torch.Tensor
    shared_grads: torch.Tensor | None = None


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
    if isinstance(balancer, LossWeighting):
        losses, aux = loss_fn(agent, *data)
        objective = balancer.weighted_loss(losses)
        grads = torch.autograd.grad(objective, list(params.values()))
        for parameter, gradient in zip(params.values(), grads):
            parameter.grad = gradient
        return BackwardResult(losses.detach(), aux)

    if not isinstance(balancer, GradientManipulation):
        raise TypeError(f"{type(balancer).__name__} is neither LossWeighting nor GradientManipulation.")
    losses, aux, grads = per_task_gradients(agent, loss_fn, data, set(params))
    shared = [name for name in params if not is_task_specific(name)]
    stacked = torch.cat([grads[name].flatten(1) for name in shared], dim=1)
    direction = balancer.combine(stacked)
    offset = 0
    for name in shared:
        parameter = params[name]
        parameter.grad = direction[offset : offset + parameter.numel()].view_as(parameter)
        offset += parameter.numel()
    num_tasks = stacked.shape[0]
    for name, parameter in params.items():
        if is_task_specific(name):
            parameter.grad = grads[name] / num_tasks
    return BackwardResult(losses.detach(), aux, stacked)


@dataclass
class ConflictStats:
    """Pairwise cosine picture of the `[K, D]` task gradients of one update (0-d device tensors)."""

    FIELDS: ClassVar[tuple[str, ...]] = ("cosine_min", "cosine_mean", "conflicting_pairs")

    cosine_min: torch.Tensor
    cosine_mean: torch.Tensor
    conflicting_pairs: torch.Tensor  # number of task pairs whose gradients have a negative dot product


def conflict_stats(shared_grads: torch.Tensor) -> ConflictStats:
    """Min and mean pairwise cosine of `[K, D]` task gradients and the number of conflicting pairs."""
    num_tasks = shared_grads.shape[0]
    gram = shared_grads @ shared_grads.T
    norms = gram.diagonal().clamp_min(1e-20).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :])
    upper = torch.triu_indices(num_tasks, num_tasks, offset=1, device=cosine.device)
    pairs = cosine[upper[0], upper[1]]
    if pairs.numel() == 0:
        pairs = torch.ones(1, device=cosine.device)
    return ConflictStats(pairs.min(), pairs.mean(), (pairs < 0).sum().to(torch.float32))
