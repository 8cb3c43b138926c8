"""Shared fixtures: tiny real Metaworld envs and a helper to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs import EnvSpec, build_env

REPO = Path(__file__).resolve().parent.parent

# Small, fast settings for end-to-end runs through the CLI.
TINY_RUN = [
    "env=custom",
    "env.tasks=[reach-v3,push-v3]",
    "env.max_episode_steps=40",
    "agent.hidden_dim=32",
    "agent.num_layers=2",
    "agent.batch_size_per_task=16",
    "agent.warmup_steps=40",
    "steps=120",
    "eval.every=60",
    "eval.episodes=1",
    "log.every=20",
    "log.conflicts_every=5",
    "progress=false",
]


@pytest.fixture
def two_task_env():
    env = build_env(EnvSpec(name="custom", tasks=("reach-v3", "push-v3"), max_episode_steps=3), seed=0)
    yield env
    env.close()


def run_cli(*overrides: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m mtrl_famo.train` as a user would, from a directory outside the repo."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "mtrl_famo.train", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


# Tags that two runs with the same seed must log identically on CPU (perf/ is wall-clock time).
DETERMINISTIC_TAGS = ("loss/", "eval/", "alpha/", "train/", "balancer/")


def tb_scalars(run_dir: Path, prefixes: tuple[str, ...] = ("",)) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a run dir whose tag starts with one of `prefixes`, as (step, value) pairs, read
    back with TensorBoard's own reader (every event file of the directory)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
        if tag.startswith(prefixes)
    }
