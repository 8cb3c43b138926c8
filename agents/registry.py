"""The networks an agent can be built with, by name: `NETWORKS[name]` and `network_factory`.

Every network has the constructor contract of `MultiHeadMLP`:
`(in_dim, out_dim, hidden_dim, num_layers, num_tasks, *, shared_head, init, layernorm, **options)`,
maps task-grouped `[K, B, in_dim]` rows to `[K, B, out_dim]` (and one task's `[B, in_dim]`, with
its per-task parameters sliced, under `torch.func.vmap`), names every per-task parameter with a
name in `networks.TASK_AXIS_PARAMETERS` with the task axis first, and has
`reset_parameters(generator)` that draws every parameter again, in place, from its construction law
(`generator` None: torch's global generator). Every constructor argument is required: published sizes
and options of each, their one home, are configs/agent/network/<name>.yaml (and configs/agent/sac.yaml).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from mtrl_famo.agents.moore import MOORENetwork
from mtrl_famo.agents.networks import MultiHeadMLP, NetworkFactory
from mtrl_famo.agents.paco import PaCoNetwork
from mtrl_famo.agents.soft_modular import SoftModularNetwork

NETWORKS: dict[str, type[nn.Module]] = {
    "multihead": MultiHeadMLP,
    "moore": MOORENetwork,
    "soft_modular": SoftModularNetwork,
    "paco": PaCoNetwork,
}

# The keywords every network takes; the rest of a constructor's keyword-only parameters are its options.
_COMMON = frozenset({"shared_head", "init", "layernorm"})


def network_options(name: str) -> tuple[str, ...]:
    """The names of network `name`'s own options (its other keyword-only parameters), each one required."""
    signature = inspect.signature(NETWORKS[name].__init__)
    return tuple(
        p.name
        for p in signature.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON
    )


def network_factory(
    name: str,
    *,
    hidden_dim: int,
    num_layers: int,
    num_tasks: int,
    shared_head: bool,
    init: str,
    layernorm: bool,
    options: Mapping[str, Any],
) -> NetworkFactory:
    """`(in_dim, out_dim) -> network` for network `name` with these sizes and its own `options`, every
    one of them (`{}` for the multihead network, which has none); bad names, unknown or missing
    options refused in one sentence."""
    if name not in NETWORKS:
        raise ValueError(f"Unknown network '{name}'; choose one of {', '.join(NETWORKS)}.")
    options = dict(options)
    known = network_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"Network '{name}' has no option {', '.join(unknown)}; its options are: {', '.join(known) or 'none'}."
        )
    missing = sorted(set(known) - set(options))
    if missing:
        raise ValueError(f"Network '{name}' needs option(s) {', '.join(missing)} (configs/agent/network/{name}.yaml).")
    keywords: dict[str, Any] = {"shared_head": shared_head, "init": init, "layernorm": layernorm, **options}
    network = NETWORKS[name]

    def build(in_dim: int, out_dim: int) -> nn.Module:
        return network(in_dim, out_dim, hidden_dim, num_layers, num_tasks, **keywords)

    return build


__all__ = ["NETWORKS", "network_factory", "network_options"]
