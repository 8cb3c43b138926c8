"""The schedule of a run: collect, update, log, evaluate, checkpoint.

Each job lives in its own component (collector, learner, evaluator, metrics); the trainer only
decides when each one runs, and its checkpoint is the components' own `state_dict()`s.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from mtrl_famo import checkpoint
from mtrl_famo.atomic import write_text_atomic
from mtrl_famo.background_eval import BackgroundEvaluator
from mtrl_famo.build import build_agent, build_learner, build_replay, build_update
from mtrl_famo.callbacks import Callback, Stop
from mtrl_famo.collector import Collector
from mtrl_famo.config import TrainConfig, keys_with_role
from mtrl_famo.envs import build_env
from mtrl_famo.evaluator import Evaluator
from mtrl_famo.metrics import MetricsWriter, TrainMetrics
from mtrl_famo.preemption import PreemptionGuard
from mtrl_famo.run_files import CONFIG_FILE, SUMMARY_FILE
from mtrl_famo.seeding import (
    check_generator_device,
    resolve_device,
    restore_rng_state,
    rng_state,
    seed_everything,
    use_device,
)
from mtrl_famo.self_check import UpdateChoice, eager_choice
from mtrl_famo.timing import UpdateTimer
from mtrl_famo.wandb_logger import WandbRun

# Options that may change between a checkpoint and its resumption without changing the run: the
# schema's `resumable` role (mtrl_famo.config), dotted keys (`agent.compile`) or whole groups (`video`).
RESUMABLE_CHANGES = keys_with_role("resumable")


def comparable_config(values: dict[str, Any]) -> dict[str, Any]:
    """A run's config (`dataclasses.asdict` of its TrainConfig, or a checkpoint's copy of it) without
    RESUMABLE_CHANGES. (A checkpoint of an older layout never gets here: mtrl_famo.checkpoint refuses it.)"""
    values = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    for dotted in RESUMABLE_CHANGES:
        *groups, key = dotted.split(".")
        node = values
        for group in groups:
            node = node.get(group, {})
        node.pop(key, None)
    return {key: value for key, value in values.items() if value != {}}  # a group left empty (checkpoint)


class Trainer:
    """Builds everything a run needs from a validated TrainConfig and runs it."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.device = resolve_device(config.device)
        use_device(self.device)  # cuda:N current, so streams, events and graphs are made where the kernels run
        self.generator = seed_everything(config.seed, self.device)
        self.env = build_env(config.env, config.seed)
        self.task_names = self.env.task_names
        k, obs_dim, action_dim = self.env.num_tasks, self.env.obs_dim, self.env.action_dim
        self.agent = build_agent(config.agent, obs_dim, action_dim, k, self.device)
        self.learner = build_learner(config.agent, config.balancer, self.agent, self.generator)
        # What `_update` calls: the eager update until `train` chooses (self-checked speed layers).
        self.update_choice: UpdateChoice = eager_choice(self.learner)
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
        self.evaluator: Evaluator | BackgroundEvaluator
        video = config.video if config.eval.video else None  # the settings of the videos the evaluator records
        if config.eval.background:  # same results, computed in a worker process while training goes on
            self.evaluator = BackgroundEvaluator(
                config.env,
                config.seed,
                config.eval.episodes,
                self.agent.actor,
                protocol=config.eval.protocol,
                video=video,
            )
        else:
            self.evaluator = Evaluator(
                config.env,
                config.seed,
                config.eval.episodes,
                self.agent,
                self.device,
                protocol=config.eval.protocol,
                video=video,
            )
        self.metrics = TrainMetrics()
        self.update_timer = UpdateTimer(self.device)  # device time on CUDA, read only when logging
        self._logged_update_seconds = 0.0
        self._last_checkpoint_step = 0

    @property
    def env_step(self) -> int:
        """Environment steps per task done so far (the x-axis of every log)."""
        return self.collector.env_step

    # ----- one vector step ----------------------------------------------------------------
    def step(self) -> None:
        """One vector step and, once the warm-up is over, its `updates_per_step` updates.

        `loop.overlap=false`: act, step, store transition t, update (the replay holds t).
        `loop.overlap=true`: act, send a_t to the env, update while the env (its worker processes)
        steps, then wait and store t: the updates sample a replay without transition t, and the
        first step of a run without warm-up does not update (its replay is empty). Everything
        else is the same: the policy acting at t is the one after step t-1's updates, and the
        shared generator is drawn in the same order (the action, then the updates' samples).
        """
        step = self.env_step + 1  # the step being collected, counted from 1
        if not self.config.loop.overlap:
            self.collector.step()
            self._update(step)
            return
        self.collector.begin_step()
        self._update(step, replay_ready=self.replay.size > 0)
        self.collector.finish_step()

    def _update(self, step: int, *, replay_ready: bool = True) -> None:
        """The `updates_per_step` updates of vector step `step`, none in the warm-up; a reset first when due."""
        if step <= self.config.agent.warmup_steps:
            return
        if self.reset_due(step):
            self.learner.reset(self.config.agent.reset)
        if not replay_ready:
            return
        results = []
        with self.update_timer.measure():
            for _ in range(self.config.agent.updates_per_step):
                want_conflicts = (self.learner.num_updates + 1) % self.config.log.conflicts_every == 0
                batch = self.replay.sample(self.config.agent.batch_size_per_task)
                results.append(self.update_choice.update(batch, want_conflicts))
        self.metrics.add_updates(results)

    def reset_due(self, step: int) -> bool:
        """Whether vector step `step` (counted from 1) resets `agent.reset` before its updates: at every
        multiple of `agent.reset_every` after the warm-up (a step of the warm-up has no updates, so
        nothing to reset). By step number alone, so a resumed run resets where the straight one does;
        the reset draws from the run's generator, which the checkpoint restores."""
        every = self.config.agent.reset_every
        return every > 0 and step % every == 0 and step > self.config.agent.warmup_steps

    # ----- logging and evaluation ---------------------------------------------------------
    def log_train(self, writer: MetricsWriter) -> None:
        update_seconds = self.update_timer.device_seconds()
        self.metrics.write(
            writer,
            self.env_step,
            self.collector.episodes.drain(),
            self.agent.task_alphas(),
            self.learner.balancers,
            self.config.balancer.apply_to,
            update_seconds=update_seconds - self._logged_update_seconds,
        )
        self._logged_update_seconds = update_seconds

    def evaluate(self, writer: MetricsWriter, bar: tqdm | None = None) -> None:
        """Evaluate the policy of this step: at once (`eval.background=false`), or in the background
        evaluator's worker while training goes on; either way its result is logged at this step."""
        self.evaluator.submit(self.env_step, video=self._video_due())
        self.log_evaluations(writer, bar)

    def _video_due(self) -> bool:
        """With eval.video: at every `video.every`-th evaluation (by step, so a resumed run agrees)
        and at the final one."""
        config, step = self.config, self.env_step
        if not config.eval.video:
            return False
        nth = step // config.eval.every if step % config.eval.every == 0 else None
        return step >= config.steps or (nth is not None and nth % config.video.every == 0)

    def log_evaluations(self, writer: MetricsWriter, bar: tqdm | None = None, *, wait: bool = False) -> None:
        """Log each evaluation that has finished (with `wait`: all of them) at the step it evaluated;
        the progress bar shows the latest."""
        finished = self.evaluator.collect(wait=wait)
        for step, result in finished:
            writer.evaluation(result, step)
        for step, videos in self.evaluator.collect_videos():
            writer.videos(videos, step)
        if finished:
            writer.flush()
            if bar is not None:
                bar.set_postfix(eval_success=f"{finished[-1][1].mean_success_rate:.2f}")

    def summary(self) -> dict[str, Any]:
        self.raise_if_a_check_failed()
        self.evaluator.wait()  # the final evaluation may still be running in the background
        result = self.evaluator.last
        return {
            "env_steps": self.env_step,
            "steps": self.config.steps,
            "complete": self.env_step >= self.config.steps,
            "eval_success_rate": None if result is None else result.mean_success_rate,
            "eval_success_rate_per_task": None
            if result is None
            else dict(zip(result.task_names, map(float, result.success_rate))),
            "update": self.update_choice.record(),  # which update trained (eager, compiled, graph) and why
        }

    # ----- checkpoint / resume ------------------------------------------------------------
    def _checkpoint_due(self) -> bool:
        """At the first exact resume point at or after each multiple of `checkpoint.every`."""
        every = self.config.checkpoint.every
        return every > 0 and self.env_step // every > self._last_checkpoint_step // every

    def _comparable_config(self) -> dict[str, Any]:
        return comparable_config(dataclasses.asdict(self.config))

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
        saved, current = comparable_config(state["config"]), self._comparable_config()
        if saved != current:
            key = next(k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k))
            raise checkpoint.CheckpointError(
                f"{self.run_dir} holds a checkpoint of a different run ({key}: {saved.get(key)!r} there, "
                f"{current.get(key)!r} now); use another run_dir or move that directory away."
            )
        try:
            check_generator_device(state["rng"], self.generator)
        except ValueError as error:
            raise checkpoint.CheckpointError(f"{self.run_dir} holds a checkpoint that {error}.") from None
        self.agent.load_state_dict(state["agent"])
        self.learner.load_state_dict(state["learner"])
        self.replay.load_state_dict(state["replay"])
        restore_rng_state(state["rng"], self.generator)
        self.collector.load_state_dict(state["collector"])
        self.evaluator.load_state_dict(state["evaluator"])
        self.metrics.load_state_dict(state["metrics"], self.device)
        self._last_checkpoint_step = self.env_step

    def raise_if_a_check_failed(self) -> None:
        """Read the balancers' device-side loss checks (on CUDA they are otherwise read only every
        DEVICE_CHECK_EVERY updates): a failure in the last updates must stop the run before it is
        saved or summarised, not be checkpointed and never reported."""
        for balancer in self.learner.balancers.values():
            balancer.raise_if_failed()

    def save_checkpoint(self) -> None:
        self.raise_if_a_check_failed()
        checkpoint.save(self.run_dir, self.state_dict())
        self._last_checkpoint_step = self.env_step

    def resume(self) -> bool:
        """Continue from the run directory's checkpoint if there is one; True when resumed."""
        state = checkpoint.load_latest(self.run_dir, map_location="cpu")
        if state is None:
            return False
        self.load_state_dict(state)
        return True

    def choose_update(self) -> UpdateChoice:
        """Choose the update to train with from the present state (after a resume, before the first
        update): each speed layer switched on is checked against the eager update and falls back with
        one warning line, or, set to `true`, stops the run here (mtrl_famo.self_check.SpeedLayerError)."""
        self.update_choice = build_update(self.config.agent, self.config.balancer, self.learner)
        return self.update_choice

    # ----- the loop -----------------------------------------------------------------------
    def train(self, resolved_config: str | None = None, *, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
        """Run (or resume) to `config.steps` environment steps per task; returns the summary.

        `resolved_config` (the YAML of the full config) is saved beside the event files once the
        run directory is known to be this run's, so a refused resume overwrites nothing.
        `callbacks` see the trainer after every vector step and may end the loop early
        (`mtrl_famo.callbacks.Stop`): at once, or at the first exact resume point with a final
        evaluation and a checkpoint, so the run can be continued later like any interrupted one.
        """
        config = self.config
        stop_at_resume_point = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        had_events = any(self.run_dir.glob("events.out.tfevents.*"))
        resumed = self.resume()
        try:
            self.choose_update()  # before anything is written: a required layer that fails stops the run here
        except BaseException:
            self.env.close()
            self.evaluator.close()
            raise
        if resolved_config is not None:
            write_text_atomic(self.run_dir / CONFIG_FILE, resolved_config)
        # Hide whatever an interrupted earlier attempt logged after the point we continue from.
        purge_step = self.env_step + 1 if resumed else (0 if had_events else None)
        writer = MetricsWriter(self.run_dir, self.task_names, purge_step=purge_step)
        writer.update_layers(self.update_choice.line(), self.env_step)
        self.metrics.start_window(self.env_step)
        bar = tqdm(
            desc=f"update={self.update_choice.used}",  # the bar's line says which update trains
            total=config.steps,
            initial=self.env_step,
            disable=None if config.progress else True,
            unit="step",
            dynamic_ncols=True,
        )
        try:
            if config.wandb.enabled:  # in the try: a W&B start that fails still closes the env workers
                values = dataclasses.asdict(config) if resolved_config is None else yaml.safe_load(resolved_config)
                writer.wandb = WandbRun(config.wandb, self.run_dir, values, resumed=resumed)
            with PreemptionGuard() as guard:
                while self.env_step < config.steps:
                    self.step()
                    bar.update(1)
                    self.log_evaluations(writer, bar)  # a background evaluation, as soon as it is ready
                    if self.env_step % config.log.every == 0:
                        self.log_train(writer)
                    if self.env_step % config.eval.every == 0 or self.env_step == config.steps:
                        self.evaluate(writer, bar)
                    at_resume_point = self.collector.at_resume_point
                    if at_resume_point and (guard.pending is not None or self._checkpoint_due()):
                        self.log_evaluations(writer, bar, wait=True)  # a resumed run does not redo them
                        writer.flush()
                        self.save_checkpoint()
                        guard.hand_over()
                    decisions = {callback.on_step_end(self) for callback in callbacks}
                    if Stop.NOW in decisions:
                        return self.summary()  # a benchmark's window is over: nothing more is written
                    stop_at_resume_point |= Stop.AT_RESUME_POINT in decisions
                    if at_resume_point and stop_at_resume_point:
                        if self.env_step % config.eval.every != 0:  # not evaluated at this step yet
                            self.evaluate(writer, bar)
                        break
                self.log_evaluations(writer, bar, wait=True)
                if self.collector.at_resume_point and self._last_checkpoint_step != self.env_step:
                    writer.flush()
                    self.save_checkpoint()  # a finished run re-launched (e.g. re-queued) stays finished
            summary = self.summary()
            writer.summary(summary)
            write_text_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
            return summary
        finally:
            bar.close()
            writer.close()
            self.env.close()
            self.evaluator.close()
