"""Acting in the training env: uniform random warm-up, then the policy; feeding the replay.

The collector also knows where a run can be resumed exactly. With a fixed horizon and no
termination (the Metaworld MT default) every task ends its episode on the same step; right after
such a step the simulators hold fresh resets, which the env's RNG state taken just before that
step reproduces. So a checkpoint there needs no simulator state: only RNG states and counters
(and the running reward scale's statistics, with env.reward_normalization=running_std).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from mtrl_famo.agents.sac import MultiTaskSAC
from mtrl_famo.envs import EpisodeTracker, MultiTaskEnv, RunningRewardScale, VectorStep
from mtrl_famo.envs.builder import REWARD_NORMALIZATIONS
from mtrl_famo.replay import TaskReplay


class Collector:
    """Steps the vector env once per call, stores the transition of every task, scores episodes.

    `reward_normalization` (env.reward_normalization): `none` stores raw rewards; `running_std`
    stores each task's reward divided by its running standard deviation (`RunningRewardScale`,
    updated once per step, warm-up included), as the published env wrapper handed them to the
    agent. Only the replay (what the agent learns from) sees scaled rewards: the episode returns
    that `episodes` (EpisodeTracker) accumulates, and so the logged train returns, stay RAW
    Metaworld rewards, comparable across settings and with evaluation returns.
    """

    def __init__(
        self,
        env: MultiTaskEnv,
        agent: MultiTaskSAC,
        replay: TaskReplay,
        warmup_steps: int,
        generator: torch.Generator,
        device: torch.device,
        *,
        reward_normalization: str,
    ):
        if reward_normalization not in REWARD_NORMALIZATIONS:
            raise ValueError(
                f"Unknown env.reward_normalization '{reward_normalization}'; "
                f"choose one of {', '.join(REWARD_NORMALIZATIONS)}."
            )
        self.env = env
        self.agent = agent
        self.replay = replay
        self.warmup_steps = warmup_steps
        self.generator = generator
        self.device = device
        self.env_step = 0  # environment steps per task done so far
        self.obs = env.reset()
        self.episodes = EpisodeTracker(env.num_tasks)
        self.episode_step = 0
        self._env_rng_before_reset: list[Any] | None = None
        self.reward_scale = RunningRewardScale(env.num_tasks) if reward_normalization == "running_std" else None

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Uniform random actions for the first `warmup_steps` steps, then a policy sample."""
        k, action_dim = self.env.num_tasks, self.env.action_dim
        if self.env_step < self.warmup_steps:
            return torch.rand(k, action_dim, device=self.device, generator=self.generator) * 2.0 - 1.0
        with torch.no_grad():
            noise = torch.randn(k, action_dim, device=self.device, generator=self.generator)
            action, _ = self.agent.actor.sample(obs.unsqueeze(1), noise.unsqueeze(1))
        return action.squeeze(1)

    def step(self) -> VectorStep:
        """One vector step: act, step, store (terminated only: truncation bootstraps), score.

        The replay gets the (possibly scaled) training reward, the episode tracker the raw one.
        """
        obs = torch.as_tensor(self.obs, device=self.device)
        action = self.act(obs)
        ends_episode = self.episode_step + 1 == self.env.max_episode_steps
        env_rng = self.env.rng_state() if ends_episode else None
        result = self.env.step(action.cpu().numpy())
        self.episode_step += 1
        if result.done.all():
            self.episode_step = 0
            self._env_rng_before_reset = env_rng
        elif result.done.any():  # episodes no longer aligned across tasks: no exact resume point
            self._env_rng_before_reset = None
        reward = result.reward if self.reward_scale is None else self.reward_scale(result.reward)
        self.replay.add(
            obs=obs,
            action=action,
            reward=torch.as_tensor(reward, dtype=torch.float32, device=self.device),
            next_obs=torch.as_tensor(result.next_obs, device=self.device),
            terminated=torch.as_tensor(result.terminated, dtype=torch.float32, device=self.device),
        )
        self.episodes.record(result.reward, result.success, result.done)
        self.obs = result.obs
        self.env_step += 1
        return result

    @property
    def at_resume_point(self) -> bool:
        """True right after an episode end shared by every task, where a checkpoint is exact."""
        return self.episode_step == 0 and self._env_rng_before_reset is not None

    def state_dict(self) -> dict[str, Any]:
        if not self.at_resume_point:
            raise RuntimeError("A checkpoint can only be taken at an episode end shared by every task.")
        return {
            "env_step": self.env_step,
            "obs": self.obs,
            "env_rng_before_reset": self._env_rng_before_reset,
            "episodes": self.episodes.state_dict(),
            "reward_scale": None if self.reward_scale is None else self.reward_scale.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the fresh resets of the episode end the state was taken at.

        A state without "reward_scale" (written before reward scaling existed, when every run
        stored raw rewards) loads as one of a run without scaling.
        """
        saved_scale = state.get("reward_scale")
        if (saved_scale is None) != (self.reward_scale is None):
            raise ValueError(
                "The checkpoint's reward scaling does not match this run's env.reward_normalization "
                f"({'none' if saved_scale is None else 'running_std'} there)."
            )
        self.env.restore_rng_state(state["env_rng_before_reset"])
        self.obs = self.env.reset()
        if not np.array_equal(self.obs, state["obs"]):
            warnings.warn(
                "The environment did not reproduce the checkpoint's observation; the resumed run "
                "continues but is not an exact continuation.",
                RuntimeWarning,
                stacklevel=2,
            )
            self.obs = state["obs"]
        self._env_rng_before_reset = state["env_rng_before_reset"]
        self.episode_step = 0
        self.episodes.load_state_dict(state["episodes"])
        self.env_step = int(state["env_step"])
        if self.reward_scale is not None:
            self.reward_scale.load_state_dict(saved_scale)
