"""Multi-head SAC: the agent's parameters and its per-task loss functions.

Every loss function takes the agent first and returns `(losses, aux)` where `losses` has one
entry per task: shape `[K]` on task-grouped `[K, B, ...]` data. Written once, a loss function
is evaluated two ways: directly on the whole batch, or per task under `torch.func.vmap` with
the agent's parameters swapped for one task's slice (see mtrl_famo.task_gradients).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mtrl_famo.agents.networks import Actor, TwinCritic
from mtrl_famo.agents.registry import network_factory

# The choices of agent.heads and agent.alpha, and which balanced losses can be negative: their one
# home is the config schema (re-exported here).
from mtrl_famo.config import ALPHAS, HEADS, LOSSES_THAT_CAN_BE_NEGATIVE  # noqa: F401

# The networks `MultiTaskSAC.reset_parameters` can re-initialise, in construction order.
RESETTABLE_PARTS = ("actor", "critic")


class MultiTaskSAC(nn.Module):
    """Actor, twin critics, target critics and the learned temperature(s).

    Every hyperparameter is a required keyword: their defaults live in configs/agent/sac.yaml and
    configs/agent/network/<name>.yaml (build with `mtrl_famo.build.build_agent` to get them, which
    passes every one). `network` names one of agents/registry.py's NETWORKS (the actor and both
    critics use it; `network_options` are all of its own options, `{}` for "multihead");
    `critic_hidden_dim` is the critics' width (None: the actor's `hidden_dim`); `critic_layernorm`
    puts a LayerNorm after each hidden linear of the critics, before its ReLU.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_tasks: int,
        *,
        heads: str,
        alpha: str,
        init: str,
        hidden_dim: int,
        num_layers: int,
        discount: float,
        init_temperature: float,
        log_std_min: float,
        log_std_max: float,
        network: str,
        network_options: Mapping[str, Any],
        critic_hidden_dim: int | None,
        critic_layernorm: bool,
    ):
        super().__init__()
        if heads not in HEADS:
            raise ValueError(f"Unknown heads '{heads}'; choose one of {', '.join(HEADS)}.")
        if alpha not in ALPHAS:
            raise ValueError(f"Unknown alpha '{alpha}'; choose one of {', '.join(ALPHAS)}.")
        self.num_tasks = num_tasks
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.discount = discount
        self.target_entropy = -float(action_dim)
        common = dict(num_layers=num_layers, num_tasks=num_tasks, shared_head=heads == "shared", init=init)
        # The actor stays plain: LayerNorm is the critics' option (agent.critic_layernorm).
        actor_net = network_factory(network, hidden_dim=hidden_dim, layernorm=False, options=network_options, **common)
        critic_width = hidden_dim if critic_hidden_dim is None else critic_hidden_dim
        critic_net = network_factory(
            network, hidden_dim=critic_width, layernorm=critic_layernorm, options=network_options, **common
        )
        self.actor = Actor(obs_dim, action_dim, network=actor_net, log_std_min=log_std_min, log_std_max=log_std_max)
        self.critic = TwinCritic(obs_dim, action_dim, network=critic_net)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.shared_alpha = alpha == "shared"
        start = math.log(init_temperature)
        self.init_log_alpha = start  # what a temperature reset (mtrl_famo.learner.SACLearner.reset) refills
        if self.shared_alpha:
            # Shape [1]: broadcasts against [K, B] and, per task under vmap, against [B].
            self.shared_log_alpha = nn.Parameter(torch.full((1,), start))
        else:
            # Shape [K, 1] so that it broadcasts against [K, B] (and [1] against [B] per task).
            self.log_alpha = nn.Parameter(torch.full((num_tasks, 1), start))

    def reset_parameters(self, parts: Sequence[str], generator: torch.Generator) -> None:
        """Re-initialise the networks named in `parts` ("actor", "critic") in place, drawing from
        `generator` with the construction's law and order (actor, then q1, q2); the target critics
        become copies of the fresh critics. The temperature is left as it is.

        In place, so optimisers and captured graphs keep pointing at the same tensors. What else a
        reset needs, and the learner does: the reset parts' optimiser state (Adam's moments and step
        counts: `mtrl_famo.optim.reset_adam_state_`); a balancer's state is about tasks, not
        parameters, and can stay (FAMO's task logits) unless the run wants it fresh too.
        """
        unknown = [part for part in parts if part not in RESETTABLE_PARTS]
        if unknown:
            choices = ", ".join(RESETTABLE_PARTS)
            raise ValueError(f"Unknown part(s) {', '.join(unknown)} to reset; choose from {choices}.")
        for part in RESETTABLE_PARTS:  # always in construction order, whatever order `parts` lists
            if part in parts:
                getattr(self, part).reset_parameters(generator)
        if "critic" in parts:
            with torch.no_grad():
                for target, online in zip(self.critic_target.parameters(), self.critic.parameters()):
                    target.copy_(online)

    @property
    def temperature(self) -> nn.Parameter:
        """The log-temperature parameter: `[K, 1]` per task, or `[1]` shared."""
        return self.shared_log_alpha if self.shared_alpha else self.log_alpha

    def alpha(self) -> torch.Tensor:
        return self.temperature.exp()

    def task_alphas(self) -> torch.Tensor:
        """Each task's temperature, `[K]` (the shared one repeated), for logging."""
        return self.alpha().reshape(-1).expand(self.num_tasks)

    def temperature_objective(self, alpha_losses: torch.Tensor) -> torch.Tensor:
        """The scalar the temperature optimiser minimises, from the per-task losses `[K]`.

        Per-task temperatures: the sum (each temperature gets exactly its own task's gradient).
        Shared: the mean over tasks, i.e. the usual SAC temperature loss over the whole batch. It
        is not passed through the gradient balancer: one scalar parameter has no conflict to
        resolve that a mean would not (docs/protocols.md).
        """
        return alpha_losses.mean() if self.shared_alpha else alpha_losses.sum()

    @torch.no_grad()
    def td_target(
        self,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Soft Bellman target `[K, B]`; bootstraps unless the episode really terminated."""
        next_action, next_log_prob = self.actor.sample(next_obs, noise)
        q1, q2 = self.critic_target(next_obs, next_action)
        soft_value = torch.min(q1, q2) - self.alpha() * next_log_prob
        return reward + self.discount * (1.0 - terminated) * soft_value

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """Polyak averaging: target <- (1 - tau) * target + tau * online."""
        torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), tau)


def critic_loss(
    agent: MultiTaskSAC, obs: torch.Tensor, action: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task sum of the two critics' mean squared TD errors; aux = mean Q1 per task."""
    q1, q2 = agent.critic(obs, action)
    losses = (q1 - target).pow(2).mean(-1) + (q2 - target).pow(2).mean(-1)
    return losses, q1.detach().mean(-1)


def actor_loss(agent: MultiTaskSAC, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task `E[alpha * log pi(a|s) - min Q(s, a)]`; aux = the sampled actions' log-probs."""
    action, log_prob = agent.actor.sample(obs, noise)
    q1, q2 = agent.critic(obs, action)
    losses = (agent.alpha().detach() * log_prob - torch.min(q1, q2)).mean(-1)
    return losses, log_prob.detach()


def alpha_loss(agent: MultiTaskSAC, log_prob: torch.Tensor) -> torch.Tensor:
    """Per-task temperature loss `E[-alpha * (log pi + target entropy)]` (mtrl/CleanRL form)."""
    return -(agent.alpha() * (log_prob + agent.target_entropy).detach()).mean(-1)
