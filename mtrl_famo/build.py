"""Build a run's components from a validated TrainConfig, exactly as the CLI does.

Scripts and tests build through these functions too, so a benchmark or a test measures the
agent, learner and balancers that `python -m mtrl_famo.train` would train.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mtrl_famo import balancers
from mtrl_famo.agents.sac import MultiTaskSAC
from mtrl_famo.balancers import Balancer
from mtrl_famo.compiled_update import speed_layers, use_capturable_adam
from mtrl_famo.config import BALANCED_LOSSES, AgentConfig, BalancerConfig
from mtrl_famo.learner import SACLearner
from mtrl_famo.replay import TaskReplay
from mtrl_famo.self_check import UpdateChoice, choose_update


def build_agent(
    agent: AgentConfig, obs_dim: int, action_dim: int, num_tasks: int, device: torch.device
) -> MultiTaskSAC:
    """The agent of `agent` (every key passed, the network's options included) on `device`; on
    `torch.device("meta")` it is built without memory or initialisation (the memory check counts it)."""
    if device.type == "meta":
        with torch.device("meta"):
            return _agent(agent, obs_dim, action_dim, num_tasks)
    return _agent(agent, obs_dim, action_dim, num_tasks).to(device)


def _agent(agent: AgentConfig, obs_dim: int, action_dim: int, num_tasks: int) -> MultiTaskSAC:
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
        network=agent.network["name"],
        network_options={key: value for key, value in agent.network.items() if key != "name"},
        critic_hidden_dim=agent.critic_hidden_dim,
        critic_layernorm=agent.critic_layernorm,
    )


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
    """The eager learner with fused Adam (capturable where agent.cuda_graph may record it); its
    `update` is the reference. The update a run trains with comes from `build_update`."""
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
    use_capturable_adam(learner, agent_config.cuda_graph)
    return learner


def eager_copy(learner: SACLearner, balancer: BalancerConfig) -> SACLearner:
    """A second, independent eager learner in `learner`'s present state (agent, optimisers, balancers,
    update count, generator), built the way `build_learner` builds one: the self-check's reference."""
    agent = copy.deepcopy(learner.agent)
    source = learner.generator
    generator = None if source is None else torch.Generator(source.device).set_state(source.get_state())
    reference = SACLearner(
        agent,
        build_balancers(balancer, agent.num_tasks, agent.temperature.device),
        lr=learner.lr,
        tau=learner.tau,
        actor_update_every=learner.actor_update_every,
        target_update_every=learner.target_update_every,
        generator=generator,
    )
    reference.load_state_dict(copy.deepcopy(learner.state_dict()))
    return reference


def build_update(agent_config: AgentConfig, balancer: BalancerConfig, learner: SACLearner) -> UpdateChoice:
    """The update a run trains with: agent.compile / agent.cuda_graph as configured, each layer that
    is on checked against the eager update first (mtrl_famo.self_check). Call it after loading a
    checkpoint and before the first update."""
    return choose_update(
        learner,
        speed_layers(learner, agent_config.compile, agent_config.cuda_graph),
        agent_config.batch_size_per_task,
        lambda: eager_copy(learner, balancer),
    )


def build_replay(
    agent: AgentConfig, num_tasks: int, obs_dim: int, action_dim: int, device: torch.device, generator: torch.Generator
) -> TaskReplay:
    """`agent.replay_size` transitions in all, split evenly across the tasks."""
    return TaskReplay(num_tasks, max(1, agent.replay_size // num_tasks), obs_dim, action_dim, device, generator)
