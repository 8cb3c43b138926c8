"""TensorBoard scalars with the project's tag names; x-axis = environment steps per task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from mtrl_famo.envs.evaluation import EvalResult
from mtrl_famo.run_files import EVAL_SUCCESS_TAG


class TBLogger:
    """Thin wrapper so that every tag name lives in one file."""

    def __init__(self, run_dir: Path, task_names: list[str], purge_step: int | None = None):
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.task_names = task_names

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, float(value), step)

    def per_task(self, prefix: str, values: np.ndarray, step: int) -> None:
        for name, value in zip(self.task_names, values):
            self.scalar(f"{prefix}/{name}", value, step)

    def evaluation(self, result: EvalResult, step: int) -> None:
        self.scalar(EVAL_SUCCESS_TAG, result.mean_success_rate, step)
        self.scalar("eval/return", float(result.mean_return.mean()), step)
        self.per_task(EVAL_SUCCESS_TAG, result.success_rate, step)
        self.per_task("eval/return", result.mean_return, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
