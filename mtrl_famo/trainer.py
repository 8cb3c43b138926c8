"""The training loop: act, step the vector env, store, update, log, evaluate."""

from __future__ import annotations

import dataclasses
import json
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mtrl_famo.envs import MultiTaskEnv, build_env, evaluate, normalise_step
from mtrl_famo.envs.evaluation import EvalResult
from mtrl_famo import checkpoint
from mtrl_famo.build import build_agent, build_learner, build_replay
from mtrl_famo.atomic import write_text_atomic
from mtrl_famo.balancers import LossWeighting
from mtrl_famo.config import TrainConfig
from mtrl_famo.learner import UpdateResult
from mtrl_famo.preemption import PreemptionGuard
from mtrl_famo.run_files import CONFIG_FILE, SUMMARY_FILE
from mtrl_famo.seeding import resolve_device, seed_everything
from mtrl_famo.tb_logger import TBLogger

# Options that may change between a checkpoint and its resumption without changing the run.
RESUMABLE_CHANGES = ("steps", "progress", "device", "run_dir", "checkpoint_every")


@dataclass
class EpisodeTracker:
    """Per-task running episode return and success (success at ANY step of the episode)."""

    num_tasks: int
    running_return: np.ndarray = field(init=False)
    running_success: np.ndarray = field(init=False)
    finished_success: list[np.ndarray] = field(default_factory=list)
    finished_return: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.running_return = np.zeros(self.num_tasks)
        self.running_success = np.zeros(self.num_tasks, dtype=bool)

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("running_return", "running_success", "finished_success", "finished_return")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def record(self, reward: np.ndarray, success: np.ndarray, done: np.ndarray) -> None:
        self.running_return += reward
        self.running_success |= success > 0
        if done.any():
            success_now = np.where(done, self.running_success, np.nan)
            return_now = np.where(done, self.running_return, np.nan)
            self.finished_success.append(success_now)
            self.finished_return.append(return_now)
            self.running_return[done] = 0.0
            self.running_success[done] = False

    def drain(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-task mean success and return of the episodes finished since the last drain."""
        if not self.finished_success:
            return None
        with np.errstate(all="ignore"):
            success = np.nanmean(np.stack(self.finished_success), axis=0)
            returns = np.nanmean(np.stack(self.finished_return), axis=0)
        self.finished_success.clear()
        self.finished_return.clear()
        return success, returns


class Trainer:
    """Builds everything a run needs from a validated TrainConfig and runs it."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.device = resolve_device(config.device)
        self.generator = seed_everything(config.seed, self.device)
        self.env: MultiTaskEnv = build_env(config.env, config.seed)
        self.eval_env: MultiTaskEnv | None = None
        self.task_names = self.env.task_names
        k = self.env.num_tasks
        self.agent = build_agent(config.agent, self.env.obs_dim, self.env.action_dim, k, self.device)
        self.learner = build_learner(config.agent, config.balancer, self.agent, self.generator)
        self.replay = build_replay(config.agent, k, self.env.obs_dim, self.env.action_dim, self.device, self.generator)
        self.env_step = 0  # environment steps per task done so far
        self.obs = self.env.reset()
        # Exact resume points are episode ends shared by all tasks (fixed horizon, no
        # termination): there the simulator state is a fresh reset, reproducible from the env
        # RNG states taken just before the step that ended the episode.
        self.episode_step = 0
        self._env_rng_before_reset: tuple | None = None
        self._last_checkpoint_step = 0
        self.episodes = EpisodeTracker(k)
        self.last_eval: EvalResult | None = None
        self._updates: list[UpdateResult] = []
        self._update_seconds = 0.0
        self._window_start = (time.perf_counter(), 0)

    # ----- acting -------------------------------------------------------------------------
    def _act(self, obs: torch.Tensor) -> torch.Tensor:
        k, action_dim = self.env.num_tasks, self.env.action_dim
        if self.env_step < self.config.agent.warmup_steps:
            return torch.rand(k, action_dim, device=self.device, generator=self.generator) * 2.0 - 1.0
        with torch.no_grad():
            noise = torch.randn(k, action_dim, device=self.device, generator=self.generator)
            action, _ = self.agent.actor.sample(obs.unsqueeze(1), noise.unsqueeze(1))
        return action.squeeze(1)

    def _greedy_policy(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)
            return self.agent.actor.mean_action(obs_t).squeeze(1).cpu().numpy()

    # ----- one vector step ----------------------------------------------------------------
    def step(self) -> None:
        obs_t = torch.as_tensor(self.obs, device=self.device)
        action = self._act(obs_t)
        ends_episode = self.episode_step + 1 == self.env.max_episode_steps
        env_rng = self.env.vector.call("get_checkpoint") if ends_episode else None
        result = normalise_step(*self.env.vector.step(action.cpu().numpy()))
        self.episode_step += 1
        if result.done.all():
            self.episode_step = 0
            self._env_rng_before_reset = env_rng
        elif result.done.any():  # episodes no longer aligned across tasks: no exact resume point
            self._env_rng_before_reset = None
        self.replay.add(
            obs=obs_t,
            action=action,
            reward=torch.as_tensor(result.reward, device=self.device),
            next_obs=torch.as_tensor(result.next_obs, device=self.device),
            terminated=torch.as_tensor(result.terminated, dtype=torch.float32, device=self.device),
        )
        self.episodes.record(result.reward, result.success, result.done)
        self.obs = result.obs
        self.env_step += 1
        if self.env_step > self.config.agent.warmup_steps:
            started = time.perf_counter()
            for _ in range(self.config.agent.updates_per_step):
                want_conflicts = (self.learner.num_updates + 1) % self.config.conflicts_every == 0
                self._updates.append(self.learner.update(self.replay.sample(self.config.agent.batch_size_per_task), want_conflicts))
            self._update_seconds += time.perf_counter() - started

    # ----- logging and evaluation ---------------------------------------------------------
    def log_train(self, logger: TBLogger) -> None:
        step = self.env_step
        drained = self.episodes.drain()
        if drained is not None:
            success, returns = drained
            logger.scalar("train/success_rate", float(np.nanmean(success)), step)
            logger.scalar("train/return", float(np.nanmean(returns)), step)
        if self._updates:
            for name in ("critic_loss", "actor_loss", "alpha_loss"):
                per_task = torch.stack([getattr(u, name) for u in self._updates]).nanmean(0).cpu().numpy()
                logger.scalar(f"loss/{name.removesuffix('_loss')}", float(np.nanmean(per_task)), step)
            conflicts = [u.conflicts for u in self._updates if u.conflicts]
            if conflicts:
                for key, value in conflicts[-1].items():
                    loss, stat = key.split("/")
                    logger.scalar(f"balancer/{stat}" if loss == "critic" else f"balancer/{loss}/{stat}", float(value), step)
            logger.scalar("perf/update_ms", 1e3 * self._update_seconds / len(self._updates), step)
        logger.per_task("alpha", self.agent.alpha().detach().squeeze(-1).cpu().numpy(), step)
        for loss, balancer in self.learner.balancers.items():
            if isinstance(balancer, LossWeighting) and loss in self.config.balancer.apply_to:
                prefix = "balancer/weight" if loss == "critic" else f"balancer/{loss}_weight"
                logger.per_task(prefix, balancer.weights().cpu().numpy(), step)
        started, at_step = self._window_start
        now = time.perf_counter()
        logger.scalar("perf/env_steps_per_s", (step - at_step) / max(now - started, 1e-9), step)
        self._window_start = (now, step)
        self._updates.clear()
        self._update_seconds = 0.0

    def run_evaluation(self, logger: TBLogger) -> EvalResult:
        if self.eval_env is None:
            self.eval_env = build_env(self.config.env, self.config.seed)
        result = evaluate(self._greedy_policy, self.eval_env, self.config.eval_episodes)
        logger.evaluation(result, self.env_step)
        logger.flush()
        self.last_eval = result
        return result

    def summary(self) -> dict[str, Any]:
        result = self.last_eval
        return {
            "env_steps": self.env_step,
            "steps": self.config.steps,
            "complete": self.env_step >= self.config.steps,
            "eval_success_rate": None if result is None else result.mean_success_rate,
            "eval_success_rate_per_task": None
            if result is None
            else dict(zip(result.task_names, map(float, result.success_rate))),
        }

    # ----- checkpoint / resume ------------------------------------------------------------
    @property
    def at_resume_point(self) -> bool:
        """True right after an episode end shared by every task, where a checkpoint is exact."""
        return self.episode_step == 0 and self._env_rng_before_reset is not None

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return every > 0 and self.env_step // every > self._last_checkpoint_step // every

    def _comparable_config(self) -> dict[str, Any]:
        values = dataclasses.asdict(self.config)
        return {key: value for key, value in values.items() if key not in RESUMABLE_CHANGES}

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs; only valid at a resume point."""
        if not self.at_resume_point:
            raise RuntimeError("A checkpoint can only be taken at an episode end shared by every task.")
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "generator": self.generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        return {
            "config": self._comparable_config(),
            "env_step": self.env_step,
            "obs": self.obs,
            "agent": self.agent.state_dict(),
            "learner": self.learner.state_dict(),
            "replay": self.replay.state_dict(),
            "rng": rng,
            "env_rng_before_reset": self._env_rng_before_reset,
            "eval_env_rng": None if self.eval_env is None else self.eval_env.vector.call("get_checkpoint"),
            "episodes": self.episodes.state_dict(),
            "pending_updates": [dataclasses.asdict(update) for update in self._updates],
            "last_eval": None if self.last_eval is None else dataclasses.asdict(self.last_eval),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, current = state["config"], self._comparable_config()
        if saved != current:
            key = next(k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k))
            raise checkpoint.CheckpointError(
                f"{self.run_dir} holds a checkpoint of a different run ({key}: {saved.get(key)!r} there, "
                f"{current.get(key)!r} now); use another run_dir or move that directory away."
            )
        device = self.device
        self.agent.load_state_dict(state["agent"])
        self.learner.load_state_dict(state["learner"])
        self.replay.load_state_dict(state["replay"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.env.vector.call("load_checkpoint", list(state["env_rng_before_reset"]))
        self.obs = self.env.reset()
        if not np.array_equal(self.obs, state["obs"]):
            warnings.warn("The environment did not reproduce the checkpoint's observation; the resumed run "
                          "continues but is not an exact continuation.", RuntimeWarning, stacklevel=2)
            self.obs = state["obs"]
        self._env_rng_before_reset = state["env_rng_before_reset"]
        self.episode_step = 0
        if state["eval_env_rng"] is not None:
            self.eval_env = build_env(self.config.env, self.config.seed)
            self.eval_env.vector.call("load_checkpoint", list(state["eval_env_rng"]))
        self.episodes.load_state_dict(state["episodes"])
        self._updates = [
            UpdateResult(**{k: (v.to(device) if torch.is_tensor(v) else {n: t.to(device) for n, t in v.items()})
                            for k, v in update.items()})
            for update in state["pending_updates"]
        ]
        self.last_eval = None if state["last_eval"] is None else EvalResult(**state["last_eval"])
        self.env_step = self._last_checkpoint_step = int(state["env_step"])

    def save_checkpoint(self) -> None:
        checkpoint.save(self.run_dir, self.state_dict())
        self._last_checkpoint_step = self.env_step

    def resume(self) -> bool:
        """Continue from the run directory's checkpoint if there is one; True when resumed."""
        state = checkpoint.load_latest(self.run_dir, map_location="cpu")
        if state is None:
            return False
        self.load_state_dict(state)
        return True

    # ----- the loop -----------------------------------------------------------------------
    def train(self, resolved_config: str | None = None) -> dict[str, Any]:
        """Run (or resume) to `config.steps` environment steps per task; returns the summary.

        `resolved_config` (the YAML of the full config) is saved beside the event files once the
        run directory is known to be this run's, so a refused resume overwrites nothing.
        """
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        had_events = any(self.run_dir.glob("events.out.tfevents.*"))
        resumed = self.resume()
        if resolved_config is not None:
            write_text_atomic(self.run_dir / CONFIG_FILE, resolved_config)
        # Hide whatever an interrupted earlier attempt logged after the point we continue from.
        purge_step = self.env_step + 1 if resumed else (0 if had_events else None)
        logger = TBLogger(self.run_dir, self.task_names, purge_step=purge_step)
        bar = tqdm(total=config.steps, initial=self.env_step, disable=None if config.progress else True,
                   unit="step", dynamic_ncols=True)
        try:
            with PreemptionGuard() as guard:
                while self.env_step < config.steps:
                    self.step()
                    bar.update(1)
                    if self.env_step % config.log_every == 0:
                        self.log_train(logger)
                    if self.env_step % config.eval_every == 0 or self.env_step == config.steps:
                        result = self.run_evaluation(logger)
                        bar.set_postfix(eval_success=f"{result.mean_success_rate:.2f}")
                    if self.at_resume_point and (guard.pending is not None or self._checkpoint_due()):
                        logger.flush()
                        self.save_checkpoint()
                        guard.hand_over()
                if self.at_resume_point and self._last_checkpoint_step != self.env_step:
                    logger.flush()
                    self.save_checkpoint()  # a finished run re-launched (e.g. re-queued) stays finished
            summary = self.summary()
            write_text_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
            return summary
        finally:
            bar.close()
            logger.close()
            self.env.close()
            if self.eval_env is not None:
                self.eval_env.close()
