"""Soft Modularization (Yang, Xu, Wu, Wang; NeurIPS 2020).

A base network of L layers of n modules (each module a linear map of width `hidden_dim`) and a
routing network that, layer by layer, outputs for every module of layer l+1 a softmax distribution
over the n modules of layer l; module i of layer l+1 reads the routing-weighted sum of their
outputs. The routing network reads the observation embedding times the task embedding.

Following the published code where it goes beyond the paper (the official Soft-Module code, as
Meta-World+ reimplemented it with these notes: github.com/rainx0r/metaworld-algorithms,
metaworld_algorithms/nn/soft_modules.py; and facebookresearch/mtrl's SoftModularizedMLP):
- observation embedding f(s): Linear(in, D) -> ReLU -> Linear(D, D); the base network reads ReLU(f(s));
- task embedding z_tau: a linear map of the one-hot task id, i.e. one D-vector per task
  (`task_embedding` [K, 1, D]); the routing embedding is Linear-ReLU-Linear (width `routing_width`)
  of ReLU(z_tau * f(s));
- routing layer l: p_l = softmax(W_d^l ReLU(r_l)), r_0 = routing embedding, r_l = routing embedding
  * W_u^l [p_0, ..., p_{l-1}] (all earlier layers' weights, flattened: skip connections); W_d^l is
  drawn uniform in +-1e-3 with zero bias (near-uniform routing at the start);
- layer l < L-1: module outputs ReLU(sum_j p_l[i, j] M_j(x_j)); the last layer's routing is one
  distribution over its n modules, the network's feature is ReLU(sum_j p_L[j] M_j(x_j)); then the
  output layer (one shared head in the paper, or one per task with shared_head=False).

Shapes: rows are flattened to `[N, ...]`; the modules of one layer are one `[n, in, d]` batched
matmul (shared parameters); only `task_embedding` (and per-task heads) carry the task axis.
Difference from the published code: the observation embedding reads the whole input row (with the
one-hot task id when the observation carries it).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from mtrl_famo.agents.networks import StackedLinear, _init_linear, add_head, head_output, init_task_vectors, reset_head

ROUTING_OUTPUT_INIT = 1e-3  # bound of W_d's uniform init in the published code


class SoftModularNetwork(nn.Module):
    """Base network of `num_layers` x `num_modules` modules, routed per task and observation."""

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
        num_modules: int,
        embedding_dim: int,
        routing_width: int,
    ):
        super().__init__()
        if num_layers < 1 or num_modules < 1:
            raise ValueError(
                f"soft_modular needs num_layers >= 1 and num_modules >= 1, got {num_layers} and {num_modules}."
            )
        self.init = init
        self.num_modules = n = num_modules
        self.embed = nn.ModuleList([nn.Linear(in_dim, embedding_dim), nn.Linear(embedding_dim, embedding_dim)])
        self.task_embedding = nn.Parameter(torch.empty(num_tasks, 1, embedding_dim))
        self.route_embed = nn.ModuleList(
            [nn.Linear(embedding_dim, routing_width), nn.Linear(routing_width, routing_width)]
        )
        # W_u^l for l >= 1 reads the flattened weights of all earlier layers (n*n each).
        self.route_up = nn.ModuleList(nn.Linear(i * n * n, routing_width) for i in range(1, num_layers))
        self.route_down = nn.ModuleList(
            nn.Linear(routing_width, n if i == num_layers - 1 else n * n) for i in range(num_layers)
        )
        widths = [embedding_dim] + [hidden_dim] * num_layers
        self.base_layers = nn.ModuleList(StackedLinear(n, a, b, init) for a, b in pairwise(widths))
        # LayerNorm: after the embedding's hidden linear and on every module's output, before the ReLU.
        self.norms = (
            nn.ModuleList([nn.LayerNorm(embedding_dim)] + [nn.LayerNorm(hidden_dim) for _ in range(num_layers)])
            if layernorm
            else None
        )
        self.head: nn.Linear | None
        add_head(self, hidden_dim, out_dim, num_tasks, shared_head=shared_head)
        self.reset_parameters(None)  # drawn from torch's global generator, as nn.Linear's are

    def reset_parameters(self, generator: torch.Generator | None) -> None:
        """Every parameter drawn again in place: linear maps with the `init` law, W_d^l uniform in
        +-1e-3 with zero bias, the task embedding as the weight of a linear map from the one-hot id."""
        for linear in [*self.embed, *self.route_embed, *self.route_up]:
            _init_linear(linear.weight, linear.bias, linear.in_features, linear.out_features, self.init, generator)
        with torch.no_grad():
            for linear in self.route_down:
                linear.weight.uniform_(-ROUTING_OUTPUT_INIT, ROUTING_OUTPUT_INIT, generator=generator)
                linear.bias.zero_()
        init_task_vectors(self.task_embedding, self.init, generator)
        for layer in self.base_layers:
            layer.reset_parameters(generator)
        for norm in self.norms or ():
            norm.reset_parameters()
        reset_head(self, self.init, generator)

    def _norm(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return h if self.norms is None else self.norms[i](h)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The base network's output `[*rows, hidden]` and each layer's routing weights (`[*rows, n, n]`,
        the last `[*rows, n]`; row i of a matrix: module i's distribution over the previous modules)."""
        rows, n = x.shape[:-1], self.num_modules
        flat = x.reshape(-1, x.shape[-1])
        # In-place ReLUs wherever the tensor is a fresh output that no backward reads (a linear's, a
        # norm's, a product's, a mix's); `embedding` and `routing` are read again, so they stay.
        embedding = self.embed[1](torch.relu_(self._norm(0, self.embed[0](flat))))  # f(s), [N, D]
        task_mix = torch.relu_(embedding.view(*rows, -1) * self.task_embedding).view(embedding.shape)  # z_tau*f(s)
        routing = self.route_embed[1](torch.relu_(self.route_embed[0](task_mix)))
        h = torch.relu(embedding)  # every module of layer 0 reads it
        probs: list[torch.Tensor] = []
        last = len(self.base_layers) - 1
        for i, layer in enumerate(self.base_layers):
            if i == 0:
                r = torch.relu(routing)
            else:
                r = torch.relu_(routing * self.route_up[i - 1](torch.cat([p.flatten(1) for p in probs], -1)))
            logits = self.route_down[i](r)
            p = torch.softmax(logits if i == last else logits.view(-1, n, n), dim=-1)
            probs.append(p)
            if i == 0:  # every module reads the same rows: one matmul, rows first ([N, n, d]), mixed per row
                y = self._norm(1, layer.rows_first(h))
                # The only layer: [N, d]; else [n, N, d] (a view) for the next layer's modules.
                h = torch.relu((p.unsqueeze(-2) @ y).squeeze(-2)) if i == last else torch.relu_(p @ y).transpose(0, 1)
                continue
            y = self._norm(i + 1, layer(h))  # [n, N, d]
            if i < last:
                h = torch.relu(torch.einsum("nij,jnd->ind", p, y))  # a view of a matmul: no in-place
            else:
                h = torch.relu(torch.einsum("nj,jnd->nd", p, y))
        return h.view(*rows, h.shape[-1]), [p.view(*rows, *p.shape[1:]) for p in probs]

    def routing_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's routing weights for input `[*rows, in]` (see `features`)."""
        return self.features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, _ = self.features(x)
        return head_output(self, features)
