"""One multitask SAC update: critic, actor and temperatures, each through its balancer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.agents.sac import MultiTaskSAC, actor_loss, alpha_loss, critic_loss
from mtrl_famo.balanced_backward import ConflictStats, conflict_stats_from_gram
from mtrl_famo.balancers import BackwardResult, Balancer, backward_grouped
from mtrl_famo.optim import load_adam_state, make_adam
from mtrl_famo.replay import Batch

BALANCED_LOSSES = ("critic", "actor")


@dataclass
class UpdateResult:
    """Per-task figures of one update, kept on the device until logging asks for them."""

    critic_loss: torch.Tensor
    actor_loss: torch.Tensor
    alpha_loss: torch.Tensor
    conflicts: dict[str, ConflictStats]  # loss name -> statistics, when asked for and computed

    @classmethod
    def from_dict(cls, values: dict[str, Any], device: torch.device) -> UpdateResult:
        """Inverse of `dataclasses.asdict` (checkpoints), tensors moved to `device`."""
        conflicts = {
            loss: ConflictStats(**{name: tensor.to(device) for name, tensor in stats.items()})
            for loss, stats in values["conflicts"].items()
        }
        losses = {name: values[name].to(device) for name in ("critic_loss", "actor_loss", "alpha_loss")}
        return cls(**losses, conflicts=conflicts)


class SACLearner:
    """Owns the optimisers and runs the update order of mtrl's SAC.

    `balancers` maps "critic"/"actor" to the balancer applied to that loss; the temperature
    loss goes to its own optimiser (`MultiTaskSAC.temperature_objective` says how).
    """

    def __init__(
        self,
        agent: MultiTaskSAC,
        balancers: dict[str, Balancer],
        *,
        lr: float,
        tau: float,
        actor_update_every: int,
        target_update_every: int,
        generator: torch.Generator | None = None,
    ):
        missing = set(BALANCED_LOSSES) - set(balancers)
        if missing:
            raise ValueError(f"SACLearner needs a balancer for {sorted(missing)}.")
        self.agent = agent
        self.balancers = balancers
        self.tau = tau
        self.actor_update_every = actor_update_every
        self.target_update_every = target_update_every
        self.generator = generator
        named = dict(agent.named_parameters())
        self.params = {
            "critic": {n: p for n, p in named.items() if n.startswith("critic.")},
            "actor": {n: p for n, p in named.items() if n.startswith("actor.")},
        }
        self.optimizers = {
            "critic": make_adam(self.params["critic"].values(), lr),
            "actor": make_adam(self.params["actor"].values(), lr),
            "alpha": make_adam([agent.temperature], lr),
        }
        self.num_updates = 0
        # The update's pure tensor functions: mtrl_famo.compiled_update may swap in compiled ones.
        self.loss_fns = {"critic": critic_loss, "actor": actor_loss}
        self.td_target = agent.td_target

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        shape = (*like.shape[:-1], self.agent.action_dim)
        return torch.randn(shape, device=like.device, generator=self.generator)

    def _balanced_step(self, name: str, loss_fn, data: tuple[torch.Tensor, ...]) -> BackwardResult:
        """The library loop of docs/library.md: balanced backward, optimiser step, after-step update (FAMO)."""
        balancer = self.balancers[name]
        result = backward_grouped(
            self.agent, loss_fn, data, balancer, params=self.params[name], task_axis=is_task_specific
        )
        self.optimizers[name].step()
        if balancer.needs_losses_after_step:
            with torch.no_grad():
                losses_after, _ = loss_fn(self.agent, *data)
            balancer.update(result.losses, losses_after)
        return result

    def update(self, batch: Batch, want_conflicts: bool = False) -> UpdateResult:
        agent = self.agent
        target = self.td_target(batch.reward, batch.next_obs, batch.terminated, self._noise(batch.next_obs))
        critic = self._balanced_step("critic", self.loss_fns["critic"], (batch.obs, batch.action, target))
        conflicts: dict[str, ConflictStats] = {}
        if want_conflicts and (gram := critic.task_gram()) is not None:
            conflicts["critic"] = conflict_stats_from_gram(gram)

        actor_losses = alpha_losses = torch.full_like(critic.losses, float("nan"))
        if self.num_updates % self.actor_update_every == 0:
            actor = self._balanced_step("actor", self.loss_fns["actor"], (batch.obs, self._noise(batch.obs)))
            actor_losses = actor.losses
            if want_conflicts and (gram := actor.task_gram()) is not None:
                conflicts["actor"] = conflict_stats_from_gram(gram)
            alpha_losses = alpha_loss(agent, actor.aux)
            self.optimizers["alpha"].zero_grad(set_to_none=True)
            agent.temperature_objective(alpha_losses).backward()
            self.optimizers["alpha"].step()
            alpha_losses = alpha_losses.detach()

        if self.num_updates % self.target_update_every == 0:
            agent.update_target(self.tau)
        self.num_updates += 1
        return UpdateResult(critic.losses, actor_losses, alpha_losses, conflicts)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "balancers": {name: b.state_dict() for name, b in self.balancers.items()},
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            load_adam_state(opt, state["optimizers"][name])
        for name, balancer in self.balancers.items():
            balancer.load_state_dict(state["balancers"][name])
        self.num_updates = int(state["num_updates"])
