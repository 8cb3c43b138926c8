"""One multitask SAC update: critic, actor and temperatures, each through its balancer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.agents.sac import MultiTaskSAC, actor_loss, alpha_loss, critic_loss
from mtrl_famo.balanced_backward import ConflictStats, conflict_stats_from_gram
from mtrl_famo.balancers import BackwardResult, Balancer, backward_grouped
from mtrl_famo.config import BALANCED_LOSSES, RESET_PARTS  # the losses a balancer may take (their one home: the config)
from mtrl_famo.optim import load_adam_state, make_adam, reset_adam_state_
from mtrl_famo.replay import Batch


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


@dataclass
class PolicyNoise:
    """The standard-normal draws of one update, `[K, B, action_dim]` each: for the TD target's next
    actions, and for the actor's actions when the actor is due (None otherwise).

    An argument of `SACLearner.update` so that a replayed update (a CUDA graph reading them from
    static buffers) takes exactly the draws the eager update would make, from the same generator."""

    next_actions: torch.Tensor
    actions: torch.Tensor | None


class Cadence(NamedTuple):
    """What the next update does besides the critic step: the actor (and temperature) step, the
    target critics' Polyak move. A CUDA graph records one update per distinct cadence."""

    actor: bool
    target: bool


class UpdateFn(Protocol):
    """`SACLearner.update`'s signature: what the trainer calls, eager or accelerated
    (mtrl_famo.compiled_update builds the accelerated ones beside the learner)."""

    def __call__(
        self, batch: Batch, want_conflicts: bool = False, *, noise: PolicyNoise | None = None
    ) -> UpdateResult: ...


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
        self.lr = lr
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

    def cadence(self) -> Cadence:
        """Whether the next update steps the actor and moves the target critics (by `num_updates`)."""
        n = self.num_updates
        return Cadence(n % self.actor_update_every == 0, n % self.target_update_every == 0)

    def draw_noise(self, batch: Batch, actor_due: bool) -> PolicyNoise:
        """One update's policy noise from the learner's generator, in the order the eager update
        draws it: the next actions first, then the actions (only when the actor is due)."""

        def draw(like: torch.Tensor) -> torch.Tensor:
            shape = (*like.shape[:-1], self.agent.action_dim)
            return torch.randn(shape, device=like.device, generator=self.generator)

        next_actions = draw(batch.next_obs)
        return PolicyNoise(next_actions, draw(batch.obs) if actor_due else None)

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

    def update(self, batch: Batch, want_conflicts: bool = False, *, noise: PolicyNoise | None = None) -> UpdateResult:
        """One update: critic, then (when due) actor and temperatures, then (when due) the target critics.

        `noise`: this update's policy noise; None draws it here (`draw_noise`), the eager reference.
        A replayed update passes the draws it made outside the graph, in the same order."""
        agent = self.agent
        actor_due, target_due = self.cadence()
        if noise is None:
            noise = self.draw_noise(batch, actor_due)
        if actor_due and noise.actions is None:
            raise ValueError("The actor is due on this update, so `noise.actions` must be given.")
        target = self.td_target(batch.reward, batch.next_obs, batch.terminated, noise.next_actions)
        critic = self._balanced_step("critic", self.loss_fns["critic"], (batch.obs, batch.action, target))
        conflicts: dict[str, ConflictStats] = {}
        if want_conflicts and (gram := critic.task_gram()) is not None:
            conflicts["critic"] = conflict_stats_from_gram(gram)

        actor_losses = alpha_losses = torch.full_like(critic.losses, float("nan"))
        if actor_due:
            actor = self._balanced_step("actor", self.loss_fns["actor"], (batch.obs, noise.actions))
            actor_losses = actor.losses
            if want_conflicts and (gram := actor.task_gram()) is not None:
                conflicts["actor"] = conflict_stats_from_gram(gram)
            alpha_losses = alpha_loss(agent, actor.aux)
            self.optimizers["alpha"].zero_grad(set_to_none=True)
            agent.temperature_objective(alpha_losses).backward()
            self.optimizers["alpha"].step()
            alpha_losses = alpha_losses.detach()

        if target_due:
            agent.update_target(self.tau)
        self.num_updates += 1
        return UpdateResult(critic.losses, actor_losses, alpha_losses, conflicts)

    @torch.no_grad()
    def reset(self, parts: Sequence[str]) -> None:
        """Re-initialise `parts` ("actor", "critic", "temperature") and forget their Adam state, in place.

        The networks are drawn again from their construction law with the learner's generator
        (`MultiTaskSAC.reset_parameters`: actor, then the critics, whose targets become copies);
        the temperature goes back to `init_temperature`. Each part's optimiser state is zeroed
        (`reset_adam_state_`: the next step is a fresh Adam's first). Everything happens in place,
        so the tensors that a compiled update or a captured CUDA graph reads stay the ones it
        reads: the next replay sees the reset values. The balancers' state is left alone (it is
        about tasks, not parameters), as are `num_updates` and the update cadence.
        """
        unknown = [part for part in parts if part not in RESET_PARTS]
        if unknown:
            raise ValueError(f"Unknown part(s) {', '.join(unknown)} to reset; choose from {', '.join(RESET_PARTS)}.")
        networks = [part for part in parts if part != "temperature"]
        if networks:
            self.agent.reset_parameters(networks, self.generator)
        if "temperature" in parts:
            self.agent.temperature.fill_(self.agent.init_log_alpha)
        for part in parts:
            reset_adam_state_(self.optimizers["alpha" if part == "temperature" else part])

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
