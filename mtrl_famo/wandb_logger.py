"""Weights & Biases beside TensorBoard: the optional second sink of `mtrl_famo.metrics.MetricsWriter`.

Why it looks the way it does:
- Every scalar goes through `MetricsWriter.scalar`, which hands the float TensorBoard got to
  `WandbRun.scalar`: the same tags at the same steps, and no host/device sync of its own.
- A background evaluation is logged after training has logged later steps, and W&B's own step
  may only grow; so W&B's step just counts records, and every record carries `env_step`, which
  `define_metric` makes the x-axis of every chart (where values may arrive out of order).
- The scalars of one step go out as one record when a scalar of another step (or a flush) comes:
  one `log` call per log interval, not one per tag.
- The run id is kept in the run directory (written atomically before W&B starts), so a run resumed
  from its checkpoint (a re-queued Slurm job) continues the same W&B run (`resume="allow"`), and
  its offline files sync into it. What an interrupted attempt logged after that checkpoint stays in
  W&B (TensorBoard hides it with `purge_step`; W&B's rewind is not used, it needs its server).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import string
import sys
from pathlib import Path
from typing import Any

from mtrl_famo.atomic import write_text_atomic
from mtrl_famo.config import ConfigError, WandbConfig
from mtrl_famo.run_files import WANDB_RUN_ID_FILE

ID_ALPHABET, ID_LENGTH = string.ascii_lowercase + string.digits, 8  # the shape of W&B's own run ids
STEP_METRIC = "env_step"  # the x-axis of every W&B chart: environment steps per task, as in TensorBoard


def check_wandb() -> None:
    """For `wandb.enabled=true`, before any work: refuse a missing `wandb` extra in one sentence (the
    `wandb.*` values themselves are checked with the config, mtrl_famo.config.validate)."""
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "wandb.enabled=true needs the wandb package of the 'wandb' extra, which is not installed; install it "
            "with pip install -e '.[wandb]' (from the repository root), or set wandb.enabled=false."
        )


def run_id(run_dir: Path, resumed: bool) -> str:
    """The W&B run id of this run directory: a resumed run's is the one kept there; a run that starts
    from step 0 (even where an attempt without a checkpoint left an id, whose events TensorBoard
    purges too) gets a new one, kept there before W&B starts."""
    path = run_dir / WANDB_RUN_ID_FILE
    if resumed and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    new_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))
    write_text_atomic(path, new_id + "\n")
    return new_id


class WandbRun:
    """One W&B run per run directory, fed by `MetricsWriter` (scalars, videos) and the trainer (summary)."""

    def __init__(self, settings: WandbConfig, run_dir: Path, config: dict[str, Any], *, resumed: bool):
        import wandb

        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            group=settings.group,
            name=settings.name,
            tags=list(settings.tags),
            config=config,
            id=run_id(run_dir, resumed),
            resume="allow",
            dir=None if os.environ.get("WANDB_DIR") else str(run_dir),  # WANDB_DIR wins when set
        )
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)
        self._step: int | None = None
        self._pending: dict[str, Any] = {}

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._at(step)
        self._pending[tag] = value

    def video(self, tag: str, path: Path, step: int) -> None:
        """An mp4 already written to the run directory (W&B copies it into its run; its frame rate is the file's)."""
        import wandb

        self._at(step)
        self._pending[tag] = wandb.Video(str(path))

    def summary(self, values: dict[str, Any]) -> None:
        self.flush()
        self.run.summary.update(values)

    def _at(self, step: int) -> None:
        if step != self._step:
            self.flush()
            self._step = step

    def flush(self) -> None:
        """Send the pending step's values as one record."""
        if self._pending:
            self.run.log({STEP_METRIC: self._step, **self._pending})
            self._pending = {}

    def close(self) -> None:
        """Send what is pending and finish the run (W&B's files are complete afterwards). Called in
        the trainer's `finally`: a run ended by an exception or a non-zero exit (a Slurm stop
        signal, which a re-queued job resumes) is finished with exit code 1, shown as failed."""
        self.flush()
        error = sys.exc_info()[1]
        failed = error is not None and not (isinstance(error, SystemExit) and error.code in (0, None))
        self.run.finish(exit_code=1 if failed else 0)
