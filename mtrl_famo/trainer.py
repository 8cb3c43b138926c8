"""The schedule of a run: collect, update, log, evaluate, checkpoint.

Each job lives in its own component (collector, learner, evaluator, metrics); the trainer only
decides when each one runs, and its checkpoint is the components' own `state_dict()`s.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mtrl_famo import checkpoint
from mtrl_famo.atomic import write_text_atomic
from mtrl_famo.build import build_agent, build_learner, build_replay
from mtrl_famo.collector import Collector
from mtrl_famo.config import TrainConfig
from mtrl_famo.envs import build_env
from mtrl_famo.evaluator import Evaluator
from mtrl_famo.metrics import MetricsWriter, TrainMetrics
from mtrl_famo.preemption import PreemptionGuard
from mtrl_famo.run_files import CONFIG_FILE, SUMMARY_FILE
from mtrl_famo.seeding import resolve_device, restore_rng_state, rng_state, seed_everything

# Options that may change between a checkpoint and its resumption without changing the run.
RESUMABLE_CHANGES = ("steps", "progress", "device", "run_dir", "checkpoint_every")


class Trainer:
    """Builds everything a run needs from a validated TrainConfig and runs it."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.device = resolve_device(config.device)
        self.generator = seed_everything(config.seed, self.device)
        self.env = build_env(config.env, config.seed)
        self.task_names = self.env.task_names
        k, obs_dim, action_dim = self.env.num_tasks, self.env.obs_dim, self.env.action_dim
        self.agent = build_agent(config.agent, obs_dim, action_dim, k, self.device)
        self.learner = build_learner(config.agent, config.balancer, self.agent, self.generator)
        self.replay = build_replay(config.agent, k, obs_dim, action_dim, self.device, self.generator)
        self.collector = Collector(
            self.env,
            self.agent,
            self.replay,
            config.agent.warmup_steps,
            self.generator,
            self.device,
            reward_normalization=config.env.reward_normalization,
        )
        self.evaluator = Evaluator(
            config.env, config.seed, config.eval_episodes, self.agent, self.device, protocol=config.eval_protocol
        )
        self.metrics = TrainMetrics()
        self._last_checkpoint_step = 0

    @property
    def env_step(self) -> int:
        """Environment steps per task done so far (the x-axis of every log)."""
        return self.collector.env_step

    # ----- one vector step ----------------------------------------------------------------
    def step(self) -> None:
        """Collect one vector step, then `updates_per_step` updates once the warm-up is over."""
        self.collector.step()
        if self.env_step <= self.config.agent.warmup_steps:
            return
        started = time.perf_counter()
        results = []
        for _ in range(self.config.agent.updates_per_step):
            want_conflicts = (self.learner.num_updates + 1) % self.config.conflicts_every == 0
            batch = self.replay.sample(self.config.agent.batch_size_per_task)
            results.append(self.learner.update(batch, want_conflicts))
        self.metrics.add_updates(results, time.perf_counter() - started)

    # ----- logging and evaluation ---------------------------------------------------------
    def log_train(self, writer: MetricsWriter) -> None:
        self.metrics.write(
            writer,
            self.env_step,
            self.collector.episodes.drain(),
            self.agent.task_alphas(),
            self.learner.balancers,
            self.config.balancer.apply_to,
        )

    def evaluate(self, writer: MetricsWriter) -> float:
        result = self.evaluator.run()
        writer.evaluation(result, self.env_step)
        writer.flush()
        return result.mean_success_rate

    def summary(self) -> dict[str, Any]:
        result = self.evaluator.last
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
    def _checkpoint_due(self) -> bool:
        """At the first exact resume point at or after each multiple of `checkpoint.every`."""
        every = self.config.checkpoint_every
        return every > 0 and self.env_step // every > self._last_checkpoint_step // every

    def _comparable_config(self) -> dict[str, Any]:
        values = dataclasses.asdict(self.config)
        return {key: value for key, value in values.items() if key not in RESUMABLE_CHANGES}

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs; only valid at the collector's resume points."""
        return {
            "config": self._comparable_config(),
            "collector": self.collector.state_dict(),
            "agent": self.agent.state_dict(),
            "learner": self.learner.state_dict(),
            "replay": self.replay.state_dict(),
            "rng": rng_state(self.generator),
            "evaluator": self.evaluator.state_dict(),
            "metrics": self.metrics.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, current = state["config"], self._comparable_config()
        if saved != current:
            key = next(k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k))
            raise checkpoint.CheckpointError(
                f"{self.run_dir} holds a checkpoint of a different run ({key}: {saved.get(key)!r} there, "
                f"{current.get(key)!r} now); use another run_dir or move that directory away."
            )
        self.agent.load_state_dict(state["agent"])
        self.learner.load_state_dict(state["learner"])
        self.replay.load_state_dict(state["replay"])
        restore_rng_state(state["rng"], self.generator)
        self.collector.load_state_dict(state["collector"])
        self.evaluator.load_state_dict(state["evaluator"])
        self.metrics.load_state_dict(state["metrics"], self.device)
        self._last_checkpoint_step = self.env_step

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
    def train(self, resolved_config: str | None = None, *, wall_clock_limit_s: float | None = None) -> dict[str, Any]:
        """Run (or resume) to `config.steps` environment steps per task; returns the summary.

        `resolved_config` (the YAML of the full config) is saved beside the event files once the
        run directory is known to be this run's, so a refused resume overwrites nothing.
        `wall_clock_limit_s` (scripts/learning_check.py) ends the run early at the first exact
        resume point after that many seconds, with a final evaluation and a checkpoint, so the
        run can be continued later like any interrupted one.
        """
        config = self.config
        deadline = None if wall_clock_limit_s is None else time.monotonic() + wall_clock_limit_s
        self.run_dir.mkdir(parents=True, exist_ok=True)
        had_events = any(self.run_dir.glob("events.out.tfevents.*"))
        resumed = self.resume()
        if resolved_config is not None:
            write_text_atomic(self.run_dir / CONFIG_FILE, resolved_config)
        # Hide whatever an interrupted earlier attempt logged after the point we continue from.
        purge_step = self.env_step + 1 if resumed else (0 if had_events else None)
        writer = MetricsWriter(self.run_dir, self.task_names, purge_step=purge_step)
        self.metrics.start_window(self.env_step)
        bar = tqdm(
            total=config.steps,
            initial=self.env_step,
            disable=None if config.progress else True,
            unit="step",
            dynamic_ncols=True,
        )
        try:
            with PreemptionGuard() as guard:
                while self.env_step < config.steps:
                    self.step()
                    bar.update(1)
                    if self.env_step % config.log_every == 0:
                        self.log_train(writer)
                    if self.env_step % config.eval_every == 0 or self.env_step == config.steps:
                        bar.set_postfix(eval_success=f"{self.evaluate(writer):.2f}")
                    at_resume_point = self.collector.at_resume_point
                    if at_resume_point and (guard.pending is not None or self._checkpoint_due()):
                        writer.flush()
                        self.save_checkpoint()
                        guard.hand_over()
                    if at_resume_point and deadline is not None and time.monotonic() >= deadline:
                        if self.env_step % config.eval_every != 0:  # not evaluated at this step yet
                            bar.set_postfix(eval_success=f"{self.evaluate(writer):.2f}")
                        break
                if self.collector.at_resume_point and self._last_checkpoint_step != self.env_step:
                    writer.flush()
                    self.save_checkpoint()  # a finished run re-launched (e.g. re-queued) stays finished
            summary = self.summary()
            write_text_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
            return summary
        finally:
            bar.close()
            writer.close()
            self.env.close()
            self.evaluator.close()
