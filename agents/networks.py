"""Shared-trunk / per-task-head networks evaluated for all K tasks in one batched op.

Shapes: inputs are task-grouped, `[K, B, in]`, and row k goes through head k. The same
forward also works on one task's slice (`[B, in]` with that task's head, `[in, out]`), which
is what `torch.func.vmap` over the task axis sees when computing per-task gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mtrl_famo.config import INITS  # the choices of agent.init (their one home: the config schema)

# Parameters whose leading axis is the task axis: each task owns one slice and only its own
# loss reaches it. Everything else is shared by all tasks (a shared head is an ordinary
# `head.weight`/`head.bias`, a shared temperature `shared_log_alpha`). Besides the heads and
# temperatures: MOORE's task weights over its experts (agents/moore.py), Soft Modularization's task
# embedding (agents/soft_modular.py), PaCo's compositional vectors (agents/paco.py).
TASK_AXIS_PARAMETERS = frozenset(
    {"head_weight", "head_bias", "log_alpha", "task_weight", "task_embedding", "task_composition"}
)

# A network's constructor as the actor and critics call it: (in_dim, out_dim) -> module mapping
# task-grouped `[K, B, in_dim]` rows to `[K, B, out_dim]` (and one task's `[B, in_dim]` under vmap).
NetworkFactory = Callable[[int, int], nn.Module]


def is_task_specific(parameter_name: str) -> bool:
    """True for per-task parameters (heads, temperatures), whatever module holds them."""
    return parameter_name.rsplit(".", 1)[-1] in TASK_AXIS_PARAMETERS


def _init_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    fan_in: int,
    fan_out: int,
    init: str,
    generator: torch.Generator | None,
) -> None:
    """Initialise one linear map (or several stacked on a leading task/expert axis) in place, drawing
    from `generator` (None: torch's global generator, what a construction draws from; a reset passes
    its own); `bias` None for a map without one."""
    with torch.no_grad():
        if init == "xavier":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-bound, bound, generator=generator)
            if bias is not None:
                bias.zero_()
        elif init == "pytorch":
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default law for weights and biases alike
            weight.uniform_(-bound, bound, generator=generator)
            if bias is not None:
                bias.uniform_(-bound, bound, generator=generator)
        else:
            raise ValueError(f"Unknown init '{init}'; choose one of {', '.join(INITS)}.")


def apply_task_head(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-task linear map: `[K, B, h] x [K, h, out] + [K, 1, out]`, or one task's `[B, h] x [h, out] + [1, out]`."""
    if weight.shape[-1] == 1:
        # One output per task (a Q value): a broadcast product and a sum. MKL's batched matmul
        # with an inner or outer size of 1 is ~3x slower forward and backward on CPU.
        return (features * weight.transpose(-1, -2)).sum(-1, keepdim=True) + bias
    # [K,B,h] @ [K,h,out] is one batched matmul over tasks; [B,h] @ [h,out] under vmap.
    return torch.matmul(features, weight) + bias


def init_task_vectors(vectors: torch.Tensor, init: str, generator: torch.Generator | None) -> None:
    """Initialise per-task vectors `[K, ..., n]` (task weights, embeddings, compositions) in place as the
    weight of a linear map from the one-hot task id (fan_in K, fan_out n), without a bias."""
    _init_linear(vectors, None, vectors.shape[0], vectors.shape[-1], init, generator)


def add_head(module: nn.Module, width: int, out_dim: int, num_tasks: int, *, shared_head: bool) -> None:
    """Give `module` its output layer: `head` (an nn.Linear shared by all tasks, drawn with the pytorch
    law by its constructor) or the per-task `head_weight [K, width, out]` / `head_bias [K, 1, out]`
    (empty: `reset_head` draws them)."""
    module.head = nn.Linear(width, out_dim) if shared_head else None
    if not shared_head:
        module.head_weight = nn.Parameter(torch.empty(num_tasks, width, out_dim))
        module.head_bias = nn.Parameter(torch.empty(num_tasks, 1, out_dim))


def reset_head(module: nn.Module, init: str, generator: torch.Generator | None) -> None:
    """Draw the output layer `add_head` gave `module` again, in place, with the `init` law."""
    head = module.head
    if head is not None:
        _init_linear(head.weight, head.bias, head.in_features, head.out_features, init, generator)
    else:
        _init_linear(module.head_weight, module.head_bias, *module.head_weight.shape[1:], init, generator)


def head_output(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The output layer `add_head` gave `module`, applied to `features` (per task, or shared)."""
    if module.head is not None:
        return module.head(features)
    return apply_task_head(features, module.head_weight, module.head_bias)


class StackedLinear(nn.Module):
    """`n` independent linear maps (experts, modules, parameter sets) applied in one batched matmul.

    `weight` [n, in, out] and `bias` [n, 1, out] are shared by all tasks (the leading axis is NOT the
    task axis). Input `[N, in]` (the same rows for every map) or `[n, N, in]` (rows per map); output
    `[n, N, out]`.
    """

    def __init__(self, n: int, in_dim: int, out_dim: int, init: str):
        super().__init__()
        self.init = init
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        self.reset_parameters(None)  # drawn from torch's global generator, as nn.Linear's are

    def reset_parameters(self, generator: torch.Generator | None) -> None:
        """Each of the n maps drawn from the `init` law of one linear map (in place), from `generator`
        (None: torch's global generator)."""
        _init_linear(self.weight, self.bias, self.weight.shape[1], self.weight.shape[2], self.init, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x.expand(self.weight.shape[0], *x.shape[-2:]), self.weight)

    def rows_first(self, x: torch.Tensor) -> torch.Tensor:
        """The n maps of the same rows `[N, in]` as `[N, n, out]` (rows first), in ONE matmul against the
        maps side by side (`[in, n * out]`): measured faster than the batched matmul of the expanded rows
        (fwd + bwd at Soft Modularization's MT10 layer 0, 1 thread), and the rows-first layout is what a
        per-row mix of the n outputs (`[N, n, n] @ [N, n, out]`) reads without a copy."""
        num_maps, in_dim, out_dim = self.weight.shape
        weight = self.weight.transpose(0, 1).reshape(in_dim, num_maps * out_dim)
        bias = self.bias.transpose(0, 1).reshape(1, num_maps * out_dim)
        return torch.addmm(bias, x, weight).view(x.shape[0], num_maps, out_dim)


class MultiHeadMLP(nn.Module):
    """MLP trunk of `num_layers` ReLU layers shared by all tasks, then a linear head.

    The head is one per task (`head_weight` [K, h, out], `head_bias` [K, 1, out]) or, with
    `shared_head`, one for all tasks (`head`, an nn.Linear): then every parameter is shared.
    `layernorm`: a LayerNorm after each hidden linear, before its ReLU (BRO's critic layer, Nauman et
    al. 2024: Dense -> LayerNorm -> ReLU); off, the trunk is exactly the plain MLP.
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
        layernorm: bool,
    ):
        super().__init__()
        self.init = init
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers):
            linear = nn.Linear(width, hidden_dim)  # drawn with the pytorch law already
            if init != "pytorch":
                _init_linear(linear.weight, linear.bias, width, hidden_dim, init, None)
            layers.append(linear)
            if layernorm:
                layers.append(nn.LayerNorm(hidden_dim))
            layers.append(nn.ReLU(inplace=True))  # the linear's (or norm's) output is not needed for backward
            width = hidden_dim
        self.trunk = nn.Sequential(*layers)
        self.head: nn.Linear | None
        add_head(self, width, out_dim, num_tasks, shared_head=shared_head)
        if not (shared_head and init == "pytorch"):  # a shared head's constructor drew the pytorch law already
            reset_head(self, init, None)

    def reset_parameters(self, generator: torch.Generator | None) -> None:
        """Draw every parameter again, in place, from the construction's law and order (trunk layer by
        layer, weight then bias, then the head): with `generator` in the global generator's state at
        construction, the parameters come out equal to the constructed ones (init="pytorch"); None
        draws from torch's global generator."""
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                _init_linear(layer.weight, layer.bias, layer.in_features, layer.out_features, self.init, generator)
            elif isinstance(layer, nn.LayerNorm):
                layer.reset_parameters()
        reset_head(self, self.init, generator)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk on the rows flattened to 2-d: each linear's output is then a base tensor, not a
        view of one, so the in-place ReLU after it needs no copy in backward (autograd turns an
        in-place op on a view into copies of the whole base)."""
        if not len(self.trunk):
            return x
        flat = self.trunk(x.reshape(-1, x.shape[-1]))
        return flat.view(*x.shape[:-1], flat.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_output(self, self._features(x))


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy with a bounded log-std (mtrl's tanh rescaling)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        network: NetworkFactory,
        log_std_min: float,
        log_std_max: float,
    ):
        """`network(in_dim, out_dim)` builds the policy network (`agents.registry.network_factory`, which
        holds its sizes, heads, init and options; the multi-head MLP is one of its networks)."""
        super().__init__()
        self.net = network(obs_dim, 2 * action_dim)
        self.action_dim = action_dim
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-draw the policy network's parameters in place from its construction law, from `generator`."""
        self.net.reset_parameters(generator)

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
    """Two independent Q networks (clipped double-Q)."""

    def __init__(self, obs_dim: int, action_dim: int, *, network: NetworkFactory):
        """`network(in_dim, out_dim)` builds each Q network (`agents.registry.network_factory`), q1 first."""
        super().__init__()
        self.q1 = network(obs_dim + action_dim, 1)
        self.q2 = network(obs_dim + action_dim, 1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-draw both Q networks' parameters in place from their construction law (q1 first, as built)."""
        self.q1.reset_parameters(generator)
        self.q2.reset_parameters(generator)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
