"""Acting in the training env: uniform random warm-up, then the policy; feeding the replay.

The collector also knows where a run can be resumed exactly. With a fixed horizon and no
termination (the Metaworld MT default) every task ends its episode on the same step; right after
such a step the simulators hold fresh resets, which the env's RNG state taken just before that
step reproduces. So a checkpoint there needs no simulator state: only RNG states and counters
(and the running reward scale's statistics, with env.reward_normalization=running_std).

A step is split in two, `begin_step` (act, send the actions to the env) and `finish_step` (wait
for the env, store, score), so that the trainer can update while worker processes step
(`loop.overlap`); `step` does both. The only host/device sync per step is reading the action:
observations, rewards, next observations and flags reach the device through reused staging
tensors (pinned memory on CUDA) and `non_blocking` copies. Reusing them is safe because each step's
action read waits for every copy issued before it.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch

from mtrl_famo.agents.sac import MultiTaskSAC
from mtrl_famo.config import REWARD_NORMALIZATIONS
from mtrl_famo.envs import EpisodeTracker, MultiTaskEnv, RunningRewardScale, VectorStep
from mtrl_famo.replay import TaskReplay


class Staging:
    """A reused host tensor (pinned when the device is CUDA) and its device twin: one
    `non_blocking` copy per use, the same code on CPU (where the copy is an ordinary one)."""

    def __init__(self, shape: tuple[int, ...], device: torch.device):
        self.host = torch.zeros(shape, dtype=torch.float32, pin_memory=device.type == "cuda")
        self.on_device = torch.zeros(shape, dtype=torch.float32, device=device)

    def send(self, *columns: np.ndarray) -> torch.Tensor:
        """Write `columns` side by side (each `[K]` or `[K, n]`) into the host tensor, copy it over."""
        start = 0
        for column in columns:
            values = torch.from_numpy(np.asarray(column, dtype=np.float32).reshape(self.host.shape[0], -1))
            self.host[:, start : start + values.shape[1]].copy_(values)
            start += values.shape[1]
        return self.on_device.copy_(self.host, non_blocking=True)


class Collector:
    """Steps the vector env once per call, stores the transition of every task, scores episodes.

    One step is `begin_step` (draw the action from the current policy, or uniformly in the warm-up;
    send it to the env) then `finish_step` (wait for the env, store the transition, score episodes).
    Whatever runs between the two (the overlapped updates) sees a replay without this step's
    transition. The action draw is this step's only use of `generator`.

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
        self.env_seconds = 0.0  # wall clock spent handing actions to the env and waiting for its step (a timing)
        self.obs = env.reset()
        self.episodes = EpisodeTracker(env.num_tasks)
        self.episode_step = 0
        self._env_rng_before_reset: list[Any] | None = None
        self.reward_scale = RunningRewardScale(env.num_tasks) if reward_normalization == "running_std" else None
        self._obs_stage = Staging((env.num_tasks, env.obs_dim), device)
        # next_obs | reward | terminated, side by side: one copy per step.
        self._result_stage = Staging((env.num_tasks, env.obs_dim + 2), device)
        self._pending: tuple[torch.Tensor, torch.Tensor, list[Any] | None] | None = None

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
        """One vector step: act, step, store (terminated only: truncation bootstraps), score."""
        self.begin_step()
        return self.finish_step()

    def begin_step(self) -> None:
        """Act on the current obs and send the actions to the env, which steps while the caller works."""
        if self._pending is not None:
            raise RuntimeError("begin_step() was called twice without finish_step() in between.")
        obs = self._obs_stage.send(self.obs)
        action = self.act(obs)
        ends_episode = self.episode_step + 1 == self.env.max_episode_steps
        env_rng = self.env.rng_state() if ends_episode else None
        actions = action.cpu().numpy()  # the step's one host/device sync: reading the action
        started = time.perf_counter()
        self.env.step_async(actions)
        self.env_seconds += time.perf_counter() - started
        self._pending = (obs, action, env_rng)

    def finish_step(self) -> VectorStep:
        """Wait for the step `begin_step` started; store it and score the episodes.

        The replay gets the (possibly scaled) training reward, the episode tracker the raw one.
        """
        if self._pending is None:
            raise RuntimeError("finish_step() was called without begin_step() before it.")
        obs, action, env_rng = self._pending
        self._pending = None
        started = time.perf_counter()
        result = self.env.step_wait()
        self.env_seconds += time.perf_counter() - started
        self.episode_step += 1
        if result.done.all():
            self.episode_step = 0
            self._env_rng_before_reset = env_rng
        elif result.done.any():  # episodes no longer aligned across tasks: no exact resume point
            self._env_rng_before_reset = None
        reward = result.reward if self.reward_scale is None else self.reward_scale(result.reward)
        staged = self._result_stage.send(result.next_obs, reward, result.terminated)
        obs_dim = self.env.obs_dim
        self.replay.add(
            obs=obs,
            action=action,
            reward=staged[:, obs_dim],
            next_obs=staged[:, :obs_dim],
            terminated=staged[:, obs_dim + 1],
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
