"""Writing a run's TensorBoard tags, and the figures waiting to be logged.

x-axis = environment steps per task. The trainer hands over what happened (update results, the
drained episode statistics, evaluation results); the tag names come from `mtrl_famo.tags`, the one
place the docs' tag list, the report and the tests agree with.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtrl_famo.balanced_backward import ConflictStats
from mtrl_famo.balancers import Balancer
from mtrl_famo.envs.evaluation import EvalResult
from mtrl_famo.learner import UpdateResult
from mtrl_famo.run_files import VIDEOS_DIR
from mtrl_famo.tags import (
    ALPHA,
    ENV_STEPS_PER_S,
    EVAL_RETURN,
    EVAL_SUCCESS,
    EVAL_VIDEO,
    LOSS,
    TRAIN_RETURN,
    TRAIN_SUCCESS,
    UPDATE_LAYERS,
    UPDATE_MS,
    balancer_prefix,
    weight_tag,
)
from mtrl_famo.video import Video, video_path, write_video
from mtrl_famo.wandb_logger import WandbRun


def conflict_tags(loss: str) -> dict[str, str]:
    """Gradient-conflict statistics of a gradient-manipulation balancer, field -> tag."""
    prefix = balancer_prefix(loss)
    return {name: f"{prefix}grad_{name}" for name in ConflictStats.FIELDS}


class MetricsWriter:
    """The run's TensorBoard event file, its evaluation videos and, with `wandb`, its W&B run: every
    tag is written here once, for every sink."""

    def __init__(
        self, run_dir: Path, task_names: list[str], purge_step: int | None = None, wandb: WandbRun | None = None
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.run_dir = Path(run_dir)
        self.task_names = task_names
        self.wandb = wandb

    def scalar(self, tag: str, value: float, step: int) -> None:
        value = float(value)
        self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.scalar(tag, value, step)

    def per_task(self, prefix: str, values: np.ndarray, step: int) -> None:
        for name, value in zip(self.task_names, values):
            self.scalar(f"{prefix}/{name}", value, step)

    def evaluation(self, result: EvalResult, step: int) -> None:
        self.scalar(EVAL_SUCCESS, result.mean_success_rate, step)
        self.scalar(EVAL_RETURN, float(result.mean_return.mean()), step)
        self.per_task(EVAL_SUCCESS, result.success_rate, step)
        self.per_task(EVAL_RETURN, result.mean_return, step)

    def videos(self, videos: dict[str, Video], step: int) -> None:
        """Each task's evaluation video of `step`: `<run_dir>/videos/<task>_step<N>.mp4`, and
        `eval/video/<task>` in TensorBoard (an animated GIF, the summary torch's add_video writes)
        and in W&B (the mp4)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        for task, video in videos.items():
            tag = f"{EVAL_VIDEO}/{task}"
            path = video_path(self.run_dir / VIDEOS_DIR, task, step)
            write_video(path, video)
            image = Summary.Image(height=video.height, width=video.width, colorspace=3, encoded_image_string=video.gif)
            self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
            if self.wandb is not None:
                self.wandb.video(tag, path, step)

    def summary(self, values: dict[str, Any]) -> None:
        """The run's summary (summary.json's content): W&B's run summary; TensorBoard has none."""
        if self.wandb is not None:
            self.wandb.summary(values)

    def update_layers(self, line: str, step: int) -> None:
        """Which update the run trains with and why (mtrl_famo.self_check.UpdateChoice.line), as text."""
        self.writer.add_text(UPDATE_LAYERS, line, step)

    def flush(self) -> None:
        self.writer.flush()
        if self.wandb is not None:
            self.wandb.flush()

    def close(self) -> None:
        self.writer.close()
        if self.wandb is not None:
            self.wandb.close()


class TrainMetrics:
    """Update results since the last log, kept on the device until `write` reads them."""

    def __init__(self) -> None:
        self.updates: list[UpdateResult] = []
        self._window: tuple[float, int] | None = None

    def add_updates(self, results: list[UpdateResult]) -> None:
        self.updates.extend(results)

    def write(
        self,
        writer: MetricsWriter,
        step: int,
        episodes: tuple[np.ndarray, np.ndarray] | None,
        alpha: torch.Tensor,
        balancers: dict[str, Balancer],
        balanced_losses: tuple[str, ...],
        *,
        update_seconds: float,
    ) -> None:
        """Log everything pending at `step`, then start a new window.

        `episodes`: per-task mean success and return of the episodes finished in the window.
        `update_seconds`: the time the window's updates took (device time on CUDA, see
        `mtrl_famo.timing.UpdateTimer`).
        Loss weights are logged for the losses the configured balancer is applied to.
        """
        if episodes is not None:
            success, returns = episodes
            writer.scalar(TRAIN_SUCCESS, float(np.nanmean(success)), step)
            writer.scalar(TRAIN_RETURN, float(np.nanmean(returns)), step)
        if self.updates:
            for field, tag in LOSS.items():
                per_task = torch.stack([getattr(u, field) for u in self.updates]).nanmean(0).cpu().numpy()
                writer.scalar(tag, float(np.nanmean(per_task)), step)
            latest = next((u.conflicts for u in reversed(self.updates) if u.conflicts), {})
            for loss, stats in latest.items():
                for field, tag in conflict_tags(loss).items():
                    writer.scalar(tag, float(getattr(stats, field)), step)
            writer.scalar(UPDATE_MS, 1e3 * update_seconds / len(self.updates), step)
        writer.per_task(ALPHA, alpha.detach().reshape(-1).cpu().numpy(), step)
        for loss, balancer in balancers.items():
            weights = balancer.weights() if loss in balanced_losses else None
            if weights is not None:
                writer.per_task(weight_tag(loss), weights.detach().cpu().numpy(), step)
        now = time.perf_counter()
        if self._window is not None:
            started, at_step = self._window
            writer.scalar(ENV_STEPS_PER_S, (step - at_step) / max(now - started, 1e-9), step)
        self._window = (now, step)
        self.updates.clear()

    def start_window(self, step: int) -> None:
        """Start timing environment steps at `step` (a run's start or resumption)."""
        self._window = (time.perf_counter(), step)

    def state_dict(self) -> dict[str, Any]:
        """Pending update figures (an exact resume logs the same averages as an uninterrupted run)."""
        return {"updates": [dataclasses.asdict(update) for update in self.updates]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.updates = [UpdateResult.from_dict(update, device) for update in state["updates"]]
