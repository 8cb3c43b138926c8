"""Per-task gradients of the SAC agent's task-grouped losses in ONE batched backward pass.

The computation itself is the public `mtrl_famo.balancers.backprop.grouped_jacobian` (any model);
this module binds it to the agent's rule for which parameters carry the task axis
(`agents.networks.is_task_specific`: heads and temperatures, sliced per task under vmap).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.balancers.backprop import grouped_jacobian

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


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
    return grouped_jacobian(agent, loss_fn, data, trainable, is_task_specific)
