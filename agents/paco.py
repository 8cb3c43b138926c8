"""PaCo: Parameter-Compositional multitask RL (Sun, Zhang, Xu, Tomizuka, Zhan; NeurIPS 2022).

A shared parameter set Phi holds k complete parameter vectors of one MLP; task tau's network has
the parameters theta_tau = Phi w_tau, with its own compositional vector w_tau (k numbers). Every
layer, the output layer included, is composed so: W_tau = sum_j w_tau[j] W_j, b_tau = sum_j
w_tau[j] b_j. The composed layers are ReLU MLP layers of `hidden_dim` x `num_layers`, then the
composed linear output.

Checked against the authors' repository (github.com/TToTMooN/paco-mtrl,
paco/examples/metaworld_mt10_paco_conf.py: 5 parameter sets on MT10, the compositional vector a
linear map of the one-hot task id, identity last activation) and Meta-World+'s JAX version
(github.com/rainx0r/metaworld-algorithms, metaworld_algorithms/nn/paco.py: 3 x 400 layers, output
layer composed too; 5 sets for MT10, 20 for MT50). Each task's network is composed first (k x in x out
multiply-adds per layer per task, small next to the batch's matmul) and then run as one batched matmul
over tasks, which is the same function as mixing the k sets' outputs.

Shapes: `task_composition` is `[K, k]` (task axis first; `[k]` per task under vmap); Phi's layers
`[k, in, out]`, `[k, 1, out]` are shared. Not implemented: PaCo's loss mask-out and w-reset of tasks
whose loss explodes (training-loop tricks, not the network), the bias of the linear task encoder
(with a one-hot input it only adds a vector shared by all w_tau).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from mtrl_famo.agents.networks import StackedLinear, apply_task_head, init_task_vectors


class PaCoNetwork(nn.Module):
    """MLP whose every layer, output included, is task tau's composition `Phi w_tau` of k shared sets."""

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
        num_parameter_sets: int,
        identical_init: bool,
    ):
        super().__init__()
        if shared_head:
            raise ValueError(
                "paco composes every layer, the output layer too, from each task's vector: heads=shared "
                "does not apply to it; use heads=per_task."
            )
        if num_parameter_sets < 1:
            raise ValueError(f"paco needs num_parameter_sets >= 1, got {num_parameter_sets}.")
        self.init = init
        self.identical_init = identical_init
        widths = [in_dim] + [hidden_dim] * num_layers + [out_dim]
        self.layers = nn.ModuleList(StackedLinear(num_parameter_sets, a, b, init) for a, b in pairwise(widths))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(num_layers)) if layernorm else None
        self.task_composition = nn.Parameter(torch.empty(num_tasks, num_parameter_sets))
        self.reset_parameters(None)  # drawn from torch's global generator, as nn.Linear's are

    def reset_parameters(self, generator: torch.Generator | None) -> None:
        """Phi drawn again in place, each set with the `init` law of its layers (with `identical_init`,
        the PaCo repository's `kernel_identical_init`: every set a copy of the first); w as the weight
        of a linear map from the one-hot id (fan_in K, fan_out k)."""
        for layer in self.layers:
            layer.reset_parameters(generator)
            if self.identical_init:
                with torch.no_grad():
                    layer.weight.copy_(layer.weight[:1].expand_as(layer.weight))
                    layer.bias.copy_(layer.bias[:1].expand_as(layer.bias))
        for norm in self.norms or ():
            norm.reset_parameters()
        init_task_vectors(self.task_composition, self.init, generator)

    @staticmethod
    def compose(w: torch.Tensor, layer: StackedLinear) -> tuple[torch.Tensor, torch.Tensor]:
        """`(Phi w)` of one layer: weight `[*tasks, in, out]` and bias `[*tasks, 1, out]` for w `[*tasks, k]`."""
        num_sets, in_dim, out_dim = layer.weight.shape
        weight = (w @ layer.weight.reshape(num_sets, -1)).view(*w.shape[:-1], in_dim, out_dim)
        bias = (w @ layer.bias.reshape(num_sets, -1)).view(*w.shape[:-1], 1, out_dim)
        return weight, bias

    def task_parameters(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every task's composed (weight `[K, in, out]`, bias `[K, 1, out]`), layer by layer."""
        return [self.compose(self.task_composition, layer) for layer in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            weight, bias = self.compose(self.task_composition, layer)
            x = apply_task_head(x, weight, bias)  # [K,B,in] x [K,in,out] (one task: [B,in] x [in,out])
            if i < last:
                if self.norms is not None:
                    x = self.norms[i](x)
                x = torch.relu(x)
        return x
