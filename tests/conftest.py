"""Shared fixtures: tiny real Metaworld envs and a helper to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtrl_famo.envs import EnvSpec, build_env

# Tests use tiny networks: a second thread only adds overhead on these shared 2-core machines, and
# CLI subprocesses run with OMP_NUM_THREADS=1 as well.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
HOOKS = Path(__file__).resolve().parent / "hooks"

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
    # Blocking evaluation: a background one spawns an interpreter per run (2-3 s of CPU each, dozens of
    # runs). tests/test_background_eval.py and the CLI resume tests (tests/test_resume.py) run it.
    "eval.background=false",
]


@pytest.fixture(scope="session")
def tiny_cli_run(tmp_path_factory: pytest.TempPathFactory):
    """`run_cli(*TINY_RUN, balancer=<name>)` from a fresh working directory with the default run_dir,
    run once per balancer for the whole session (several test files check the same tiny run);
    returns (working directory, completed process). The run lives in `runs/custom/<name>/seed=0`
    under that directory; tests that read it take it from there, which checks the default too."""
    runs: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def get(balancer: str) -> tuple[Path, subprocess.CompletedProcess]:
        if balancer not in runs:
            cwd = tmp_path_factory.mktemp(f"tiny-{balancer}")
            result = run_cli(*TINY_RUN, f"balancer={balancer}", cwd=cwd)
            assert result.returncode == 0, result.stderr[-3000:]
            runs[balancer] = cwd, result
        return runs[balancer]

    return get


# Balancers with a run of their own in `tiny_cli_run` (test_cli reads those runs as a user's single run).
SINGLE_RUN_BALANCERS = ("mtsac", "famo")


@pytest.fixture(scope="session")
def tiny_balancer_runs(tiny_cli_run, tmp_path_factory: pytest.TempPathFactory):
    """The TINY_RUN of every registered balancer through the real CLI, as `balancer -> run dir`:
    mtsac and famo from `tiny_cli_run`, all others from ONE multirun (`-m balancer=a,b,...`, Hydra's
    basic launcher: one process, one run after another), which saves an interpreter start-up each."""
    from mtrl_famo.balancers import NAMES

    others = [name for name in NAMES if name not in SINGLE_RUN_BALANCERS]
    sweep = tmp_path_factory.mktemp("tiny-sweep") / "sweep"
    result = run_cli("-m", *TINY_RUN, f"balancer={','.join(others)}", f"hydra.sweep.dir={sweep}", cwd=sweep.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = {name: sweep / "custom" / name / "seed=0" for name in others}
    for name in SINGLE_RUN_BALANCERS:
        dirs[name] = tiny_cli_run(name)[0] / "runs" / "custom" / name / "seed=0"
    return dirs


@pytest.fixture
def two_task_env():
    env = build_env(
        EnvSpec(
            goals="random",
            reward_version="v2",
            reward_normalization="none",
            name="custom",
            tasks=("reach-v3", "push-v3"),
            max_episode_steps=3,
            one_hot=True,
            vector_strategy="sync",
            workers=1,
        ),
        seed=0,
    )
    yield env
    env.close()


def cli_environment(
    pause_at: int | None = None, marker: Path | None = None, scripted_success: bool = False
) -> dict[str, str]:
    """Environment of a CLI subprocess. With `pause_at`, tests/hooks holds the run after that step
    until a signal reaches it, writing `marker` when it gets there; with `scripted_success`, eval
    success rates become a deterministic function of the real returns (see tests/hooks)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if pause_at is not None or scripted_success:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOKS), env.get("PYTHONPATH")]))
    if pause_at is not None:
        assert marker is not None, "a paused run needs a marker file to announce the pause"
        env["MTRL_FAMO_TEST_PAUSE_AT"] = str(pause_at)
        env["MTRL_FAMO_TEST_PAUSE_MARKER"] = str(marker)
    if scripted_success:
        env["MTRL_FAMO_TEST_SCRIPTED_SUCCESS"] = "1"
    return env


def run_cli(
    *overrides: str, cwd: Path | None = None, timeout: float = 600, scripted_success: bool = False
) -> subprocess.CompletedProcess:
    """Run `python -m mtrl_famo.train` as a user would, from a directory outside the repo."""
    return subprocess.run(
        [sys.executable, "-m", "mtrl_famo.train", *overrides],
        cwd=cwd,
        env=cli_environment(scripted_success=scripted_success),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_script(name: str, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `scripts/<name>` from the repository root, as its docstring tells a user to."""
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def start_cli(*overrides: str, pause_at: int, marker: Path) -> subprocess.Popen:
    """Start the CLI in the background, held after step `pause_at` until the test signals it."""
    return subprocess.Popen(
        [sys.executable, "-m", "mtrl_famo.train", *overrides],
        env=cli_environment(pause_at, marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until `path` exists; fail at once if the process ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            output = process.communicate()
            pytest.fail(f"the run ended before {path.name} appeared: {(output[1] or output[0] or '')[-3000:]}")
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


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
