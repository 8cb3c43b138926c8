"""Shared-trunk / per-task-head networks evaluated for all K tasks in one batched op.

Shapes: inputs are task-grouped, `[K, B, in]`, and row k goes through head k. The same
forward also works on one task's slice (`[B, in]` with that task's head, `[in, out]`), which
is what `torch.func.vmap` over the task axis sees when computing per-task gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Parameters whose leading axis is the task axis: each task owns one slice and only its own
# loss reaches it. Everything else is shared by all tasks.
TASK_AXIS_PARAMETERS = frozenset({"head_weight", "head_bias", "log_alpha"})


def is_task_specific(parameter_name: str) -> bool:
    """True for per-task parameters (heads, temperatures), whatever module holds them."""
    return parameter_name.rsplit(".", 1)[-1] in TASK_AXIS_PARAMETERS


class MultiHeadMLP(nn.Module):
    """MLP trunk of `num_layers` ReLU layers shared by all tasks, then one linear head per task."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, num_layers: int, num_tasks: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            width = hidden_dim
        self.trunk = nn.Sequential(*layers)
        bound = 1.0 / math.sqrt(width)  # same law as nn.Linear's default initialisation
        self.head_weight = nn.Parameter(torch.empty(num_tasks, width, out_dim).uniform_(-bound, bound))
        self.head_bias = nn.Parameter(torch.empty(num_tasks, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [K,B,h] @ [K,h,out] is one batched matmul over tasks; [B,h] @ [h,out] under vmap.
        return torch.matmul(self.trunk(x), self.head_weight) + self.head_bias


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy with a bounded log-std (mtrl's tanh rescaling)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dim: int,
        num_layers: int,
        num_tasks: int,
        *,
        log_std_min: float,
        log_std_max: float,
    ):
        super().__init__()
        self.net = MultiHeadMLP(obs_dim, 2 * action_dim, hidden_dim, num_layers, num_tasks)
        self.action_dim = action_dim
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_log_std = self.net(obs).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw_log_std) + 1.0)
        return mean, log_std

    def sample(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action for standard-normal `noise`, and its log-probability.

        The noise comes from the caller so that the same draw can be replayed exactly
        (per-task gradients under vmap, tests, the FAMO after-step recomputation).
        """
        mean, log_std = self(obs)
        pre_tanh = mean + log_std.exp() * noise
        gaussian_log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log(1 - tanh(u)^2) written stably: 2 * (log 2 - u - softplus(-2u)).
        squash_correction = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), gaussian_log_prob - squash_correction

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action used for evaluation."""
        mean, _ = self(obs)
        return torch.tanh(mean)


class TwinCritic(nn.Module):
    """Two independent multi-head Q networks (clipped double-Q)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, num_layers: int, num_tasks: int):
        super().__init__()
        self.q1 = MultiHeadMLP(obs_dim + action_dim, 1, hidden_dim, num_layers, num_tasks)
        self.q2 = MultiHeadMLP(obs_dim + action_dim, 1, hidden_dim, num_layers, num_tasks)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
