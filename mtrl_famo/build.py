"""Build a run's components from a validated TrainConfig, exactly as the CLI does.

Scripts and tests build through these functions too, so a benchmark or a test measures the
agent, learner and balancers that `python -m mtrl_famo.train` would train.
"""

from __future__ import annotations

from typing import Any

import torch

from mtrl_famo import balancers
from mtrl_famo.agents.sac import MultiTaskSAC
from mtrl_famo.balancers import Balancer
from mtrl_famo.compiled_update import accelerate
from mtrl_famo.config import AgentConfig, BalancerConfig
from mtrl_famo.learner import BALANCED_LOSSES, SACLearner
from mtrl_famo.replay import TaskReplay


def build_agent(
    agent: AgentConfig, obs_dim: int, action_dim: int, num_tasks: int, device: torch.device
) -> MultiTaskSAC:
    return MultiTaskSAC(
        obs_dim,
        action_dim,
        num_tasks,
        heads=agent.heads,
        alpha=agent.alpha,
        init=agent.init,
        hidden_dim=agent.hidden_dim,
        num_layers=agent.num_layers,
        discount=agent.discount,
        init_temperature=agent.init_temperature,
        log_std_min=agent.log_std_min,
        log_std_max=agent.log_std_max,
    ).to(device)


def options_for_loss(options: dict[str, Any], loss: str) -> dict[str, Any]:
    """A balancer's options for one loss. A `seed` option gets one stream per loss (the critic keeps
    the configured seed, the actor's is offset), so that e.g. RLW's critic and actor weights, or
    PCGrad's projection orders, are not the same draws on every update."""
    if "seed" not in options:
        return dict(options)
    return {**options, "seed": int(options["seed"]) + 1_000_003 * BALANCED_LOSSES.index(loss)}


def build_balancers(balancer: BalancerConfig, num_tasks: int, device: torch.device) -> dict[str, Balancer]:
    """The configured balancer (with its options) for each loss in `apply_to`; the mean loss for the rest."""
    return {
        loss: (
            balancers.make(balancer.name, num_tasks, **options_for_loss(balancer.options, loss))
            if loss in balancer.apply_to
            else balancers.make("mtsac", num_tasks)
        ).to(device)
        for loss in BALANCED_LOSSES
    }


def build_learner(
    agent_config: AgentConfig,
    balancer: BalancerConfig,
    agent: MultiTaskSAC,
    generator: torch.Generator,
) -> SACLearner:
    """The eager learner, with fused Adam and agent.compile / agent.cuda_graph applied (mtrl_famo.compiled_update)."""
    device = agent.temperature.device
    learner = SACLearner(
        agent,
        build_balancers(balancer, agent.num_tasks, device),
        lr=agent_config.lr,
        tau=agent_config.tau,
        actor_update_every=agent_config.actor_update_every,
        target_update_every=agent_config.target_update_every,
        generator=generator,
    )
    return accelerate(learner, agent_config.compile, agent_config.cuda_graph)


def build_replay(
    agent: AgentConfig, num_tasks: int, obs_dim: int, action_dim: int, device: torch.device, generator: torch.Generator
) -> TaskReplay:
    """`agent.replay_size` transitions in all, split evenly across the tasks."""
    return TaskReplay(num_tasks, max(1, agent.replay_size // num_tasks), obs_dim, action_dim, device, generator)
