"""One tiny CLI run with evaluation videos and W&B (offline) on, stopped and resumed, shared by
tests/test_video.py and tests/test_wandb.py (two CLI runs cost most of their time)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TINY_RUN, cli_environment

TASKS = ("reach-v3", "push-v3")
EPISODE_STEPS = 40
FRAME_STRIDE = 8
VIDEO_SIZE = (64, 48)  # width, height
# Evaluations at 40, 80 | 120, 160: video.every=2 records the 2nd and the final one of each part (80,
# 160); the first part ends at an episode end (80), so the second resumes from its checkpoint.
OBSERVED_RUN = [
    *TINY_RUN,
    "eval.every=40",
    "eval.video=true",
    "video.every=2",
    f"video.frame_stride={FRAME_STRIDE}",
    f"video.width={VIDEO_SIZE[0]}",
    f"video.height={VIDEO_SIZE[1]}",
    "wandb.enabled=true",
    "wandb.project=observed",
    "wandb.tags=[tiny,test]",
]
FIRST_STEPS, LAST_STEPS = 80, 160
VIDEO_STEPS = (80, 160)


@dataclass(frozen=True)
class ObservedRun:
    run_dir: Path
    wandb_dir: Path  # WANDB_DIR of both parts
    parts: tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]


_RUNS: dict[str, ObservedRun] = {}


def observed_run(tmp_path_factory: pytest.TempPathFactory) -> ObservedRun:
    """Run the CLI to step 80 evaluating in the background worker (which renders), then resume it to
    160 with blocking evaluation; W&B offline into WANDB_DIR. Run once per session."""
    if "run" not in _RUNS:
        root = tmp_path_factory.mktemp("observed")
        run_dir, wandb_dir = root / "run", root / "wandb"
        env = {**cli_environment(), "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
        parts = []
        for steps, background in ((FIRST_STEPS, "true"), (LAST_STEPS, "false")):
            overrides = [*OBSERVED_RUN, f"steps={steps}", f"eval.background={background}", f"run_dir={run_dir}"]
            result = subprocess.run(
                [sys.executable, "-m", "mtrl_famo.train", *overrides],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            parts.append(result)
        _RUNS["run"] = ObservedRun(run_dir, wandb_dir, (parts[0], parts[1]))
    return _RUNS["run"]
