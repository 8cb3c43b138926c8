"""Per-task gradients of a task-grouped loss in ONE batched backward pass.

Task k's loss reads only rows k of the `[K, B, ...]` batch, so the K per-task gradients are
a `vmap` over the task axis of the gradient of one task's loss. Shared parameters enter the
vmapped function unbatched (their per-task gradients come out stacked, `[K, *shape]`);
per-task parameters (heads, temperatures) enter sliced, so task k sees only its own head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from mtrl_famo.agents.networks import is_task_specific

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class _BoundLoss(nn.Module):
    """Lets `functional_call` swap the agent's parameters while a loss function runs."""

    def __init__(self, agent: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.agent = agent
        self.loss_fn = loss_fn

    def forward(self, *data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss_fn(self.agent, *data)


def per_task_gradients(
    agent: nn.Module,
    loss_fn: LossFn,
    data: tuple[torch.Tensor, ...],
    trainable: set[str],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Losses `[K]`, aux, and `{name: [K, *shape]}` gradients of each trainable parameter.

    For a task-specific parameter the k-th slice of its gradient is task k's gradient of its
    own slice; for a shared parameter it is task k's gradient of the whole tensor.
    """
    bound = _BoundLoss(agent, loss_fn)
    groups: dict[tuple[bool, bool], dict[str, torch.Tensor]] = {
        (train, per_task): {} for train in (True, False) for per_task in (False, True)
    }
    for name, parameter in agent.named_parameters():
        groups[(name in trainable, is_task_specific(name))][name] = parameter.detach()

    def one_task(train_shared, train_task, frozen_shared, frozen_task, *task_data):
        params = {f"agent.{n}": p for d in (train_shared, train_task, frozen_shared, frozen_task) for n, p in d.items()}
        loss, aux = functional_call(bound, params, task_data)
        return loss, (loss, aux)

    batched = vmap(
        grad(one_task, argnums=(0, 1), has_aux=True),
        in_dims=(None, 0, None, 0) + (0,) * len(data),
    )
    (shared_grads, task_grads), (losses, aux) = batched(
        groups[(True, False)], groups[(True, True)], groups[(False, False)], groups[(False, True)], *data
    )
    return losses, aux, {**shared_grads, **task_grads}
