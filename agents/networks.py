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
# loss reaches it. Everything else is shared by all tasks (a shared head is an ordinary
# `head.weight`/`head.bias`, a shared temperature `shared_log_alpha`).
TASK_AXIS_PARAMETERS = frozenset({"head_weight", "head_bias", "log_alpha"})

# pytorch: nn.Linear's default (uniform in +-1/sqrt(fan_in), weights and biases).
# xavier: Xavier-uniform weights and zero biases (the published mtrl code's initialisation).
INITS = ("pytorch", "xavier")


def is_task_specific(parameter_name: str) -> bool:
    """True for per-task parameters (heads, temperatures), whatever module holds them."""
    return parameter_name.rsplit(".", 1)[-1] in TASK_AXIS_PARAMETERS


def _init_linear(weight: torch.Tensor, bias: torch.Tensor, fan_in: int, fan_out: int, init: str) -> None:
    """Initialise one linear map (or K of them stacked on a leading task axis) in place."""
    with torch.no_grad():
        if init == "xavier":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-bound, bound)
            bias.zero_()
        elif init == "pytorch":
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default law for weights and biases alike
            weight.uniform_(-bound, bound)
            bias.uniform_(-bound, bound)
        else:
            raise ValueError(f"Unknown init '{init}'; choose one of {', '.join(INITS)}.")


class MultiHeadMLP(nn.Module):
    """MLP trunk of `num_layers` ReLU layers shared by all tasks, then a linear head.

    The head is one per task (`head_weight` [K, h, out], `head_bias` [K, 1, out]) or, with
    `shared_head`, one for all tasks (`head`, an nn.Linear): then every parameter is shared.
    """

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
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers):
            linear = nn.Linear(width, hidden_dim)  # drawn with the pytorch law already
            if init != "pytorch":
                _init_linear(linear.weight, linear.bias, width, hidden_dim, init)
            layers += [linear, nn.ReLU(inplace=True)]  # the linear's output is not needed for backward
            width = hidden_dim
        self.trunk = nn.Sequential(*layers)
        self.head: nn.Linear | None = None
        if shared_head:
            self.head = nn.Linear(width, out_dim)
            if init != "pytorch":
                _init_linear(self.head.weight, self.head.bias, width, out_dim, init)
        else:
            self.head_weight = nn.Parameter(torch.empty(num_tasks, width, out_dim))
            self.head_bias = nn.Parameter(torch.empty(num_tasks, 1, out_dim))
            _init_linear(self.head_weight, self.head_bias, width, out_dim, init)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk on the rows flattened to 2-d: each linear's output is then a base tensor, not a
        view of one, so the in-place ReLU after it needs no copy in backward (autograd turns an
        in-place op on a view into copies of the whole base)."""
        if not len(self.trunk):
            return x
        flat = self.trunk(x.reshape(-1, x.shape[-1]))
        return flat.view(*x.shape[:-1], flat.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return self.head(self._features(x))
        features = self._features(x)
        if self.head_weight.shape[-1] == 1:
            # One output per task (a Q value): a broadcast product and a sum. MKL's batched matmul
            # with an inner or outer size of 1 is ~3x slower forward and backward on CPU.
            return (features * self.head_weight.transpose(-1, -2)).sum(-1, keepdim=True) + self.head_bias
        # [K,B,h] @ [K,h,out] is one batched matmul over tasks; [B,h] @ [h,out] under vmap.
        return torch.matmul(features, self.head_weight) + self.head_bias


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
        shared_head: bool,
        init: str,
        log_std_min: float,
        log_std_max: float,
    ):
        super().__init__()
        self.net = MultiHeadMLP(
            obs_dim, 2 * action_dim, hidden_dim, num_layers, num_tasks, shared_head=shared_head, init=init
        )
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

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dim: int,
        num_layers: int,
        num_tasks: int,
        *,
        shared_head: bool,
        init: str,
    ):
        super().__init__()
        shape = (obs_dim + action_dim, 1, hidden_dim, num_layers, num_tasks)
        self.q1 = MultiHeadMLP(*shape, shared_head=shared_head, init=init)
        self.q2 = MultiHeadMLP(*shape, shared_head=shared_head, init=init)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
