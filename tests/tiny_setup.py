"""The tiny real agent and task-grouped data that the gradient tests share (float64 by default)."""

from __future__ import annotations

from typing import Any

import torch

from mtrl_famo.agents.sac import MultiTaskSAC
from mtrl_famo.balancers import GradientManipulation
from mtrl_famo.replay import TaskReplay

K, B, OBS, ACT = 3, 5, 4, 2  # tasks, transitions per task, observation and action sizes


def tiny_agent(dtype: torch.dtype = torch.float64, seed: int = 0, **overrides: Any) -> MultiTaskSAC:
    """The real agent with tiny widths, so the checks cover the real trunk/head layout. `overrides`
    replace any of its sizes (`obs_dim`, `action_dim`, `num_tasks`) or constructor keywords."""
    options = {
        "obs_dim": OBS,
        "action_dim": ACT,
        "num_tasks": K,
        "heads": "per_task",
        "alpha": "per_task",
        "init": "pytorch",
        "hidden_dim": 8,
        "num_layers": 2,
        "discount": 0.99,
        "init_temperature": 1.0,
        "log_std_min": -20.0,
        "log_std_max": 2.0,
        "network": "multihead",
        "network_options": {},
        "critic_hidden_dim": None,
        "critic_layernorm": False,
    }
    unknown = set(overrides) - set(options)
    if unknown:
        raise TypeError(f"tiny_agent got unknown option(s) {sorted(unknown)}.")
    options.update(overrides)
    torch.manual_seed(seed)
    shape = (options.pop("obs_dim"), options.pop("action_dim"), options.pop("num_tasks"))
    return MultiTaskSAC(*shape, **options).to(dtype)


def fill_with_random_transitions(replay: TaskReplay, count: int) -> None:
    """Add `count` vector steps of random transitions (standard-normal observations and rewards,
    uniform actions in [-1, 1], none terminal) to `replay`."""
    k, obs_dim, action_dim = replay.num_tasks, replay.storage["obs"].shape[-1], replay.storage["action"].shape[-1]
    for _ in range(count):
        replay.add(
            obs=torch.randn(k, obs_dim),
            action=torch.rand(k, action_dim) * 2 - 1,
            reward=torch.randn(k),
            next_obs=torch.randn(k, obs_dim),
            terminated=torch.zeros(k),
        )


def critic_data(
    dtype: torch.dtype = torch.float64, seed: int = 1, target_value: float | None = None
) -> tuple[torch.Tensor, ...]:
    """(obs, action, TD target), each `[K, B, ...]`."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(K, B, OBS, generator=generator, dtype=dtype)
    action = torch.rand(K, B, ACT, generator=generator, dtype=dtype) * 2 - 1
    target = torch.randn(K, B, generator=generator, dtype=dtype) * 3
    if target_value is not None:
        target = torch.full_like(target, target_value)
    return obs, action, target


def actor_data(dtype: torch.dtype = torch.float64, seed: int = 2) -> tuple[torch.Tensor, ...]:
    """(obs, standard-normal noise for the reparameterised actions), each `[K, B, ...]`."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(K, B, OBS, generator=generator, dtype=dtype)
    return obs, torch.randn(K, B, ACT, generator=generator, dtype=dtype)


def loss_data(case: str) -> tuple[torch.Tensor, ...]:
    """The data of the `case` ("critic" or "actor") loss, both drawn from seed 1."""
    return critic_data(seed=1) if case == "critic" else actor_data(seed=1)


class FixedMix(GradientManipulation):
    """Records the [K, D] matrix it is given and returns a fixed, non-trivial mix of its rows."""

    MIX = (0.7, -1.3, 2.1)

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        self.seen = grads.clone()
        return torch.tensor(self.MIX, dtype=grads.dtype) @ grads


def tiny_trainer(run_dir, *overrides: str):
    """A real Trainer on two Metaworld tasks with 5-step episodes and a tiny agent, built from the
    config the CLI composes (`overrides` win): for tests of the loop's glue, not of learning."""
    from mtrl_famo.config import compose
    from mtrl_famo.trainer import Trainer

    return Trainer(
        compose(
            "env=custom",
            "env.tasks=[reach-v3,push-v3]",
            "env.max_episode_steps=5",
            "env.vector_strategy=sync",
            "agent.hidden_dim=16",
            "agent.num_layers=1",
            "agent.batch_size_per_task=4",
            "agent.warmup_steps=3",
            "agent.replay_size=1000",
            "device=cpu",
            "steps=30",
            "eval.every=15",
            "eval.episodes=1",
            "eval.background=false",
            "log.every=4",
            "checkpoint.every=0",
            f"run_dir={run_dir}",
            "progress=false",
            *overrides,
        )
    )
