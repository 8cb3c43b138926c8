"""Checkpoint/resume: an interrupted CPU run, resumed, ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from mtrl_famo import checkpoint
from conftest import DETERMINISTIC_TAGS, TINY_RUN, run_cli, tb_scalars

# 40-step episodes, checkpoints at every episode end: interruptions land between checkpoints.
RESUME_RUN = [*TINY_RUN, "steps=240", "checkpoint.every=40", "log.every=10"]


def start_cli(*overrides: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "mtrl_famo.train", *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"run ended before {path.name} appeared: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def checkpoint_step(run_dir: Path, name: str = checkpoint.LATEST) -> int:
    return int(torch.load(run_dir / name, map_location="cpu", weights_only=False)["env_step"])


def assert_same_run(reference: Path, resumed: Path) -> None:
    expected, got = tb_scalars(reference, DETERMINISTIC_TAGS), tb_scalars(resumed, DETERMINISTIC_TAGS)
    assert set(got) == set(expected)
    for tag, points in got.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag} has duplicated or out-of-order steps: {steps}"
        assert points == expected[tag], f"{tag} differs from the uninterrupted run"
    summary_ref = json.loads((reference / "summary.json").read_text())
    summary_got = json.loads((resumed / "summary.json").read_text())
    assert summary_got == summary_ref
    assert summary_got["env_steps"] == 240 and summary_got["complete"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli(*RESUME_RUN, "balancer=famo", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(reference_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_cli(*RESUME_RUN, "balancer=famo", f"run_dir={run_dir}", "checkpoint.every=0")
    wait_for(run_dir / "config.yaml", process)
    time.sleep(1.0)  # let it get into the run, mid-episode
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    interrupted_at = checkpoint_step(run_dir)
    assert 0 < interrupted_at < 240 and interrupted_at % 40 == 0  # saved at the next episode end
    assert not (run_dir / "summary.json").exists()

    result = run_cli(*RESUME_RUN, "balancer=famo", f"run_dir={run_dir}", "checkpoint.every=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(reference_run, run_dir)


def test_kill9_and_corrupted_newest_checkpoint_fall_back_and_still_match(reference_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_cli(*RESUME_RUN, "balancer=famo", f"run_dir={run_dir}")
    wait_for(run_dir / checkpoint.PREVIOUS, process)
    process.kill()
    process.communicate()
    newest, previous = checkpoint_step(run_dir), checkpoint_step(run_dir, checkpoint.PREVIOUS)
    assert previous < newest < 240
    # Corrupt the newest: the run must say so and continue from the previous good one.
    data = (run_dir / checkpoint.LATEST).read_bytes()
    (run_dir / checkpoint.LATEST).write_bytes(data[: len(data) // 2])

    result = run_cli(*RESUME_RUN, "balancer=famo", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not be read; resuming from the previous checkpoint" in result.stderr
    assert_same_run(reference_run, run_dir)


def test_finished_run_relaunched_stays_finished(reference_run: Path, tmp_path: Path) -> None:
    before = tb_scalars(reference_run, DETERMINISTIC_TAGS)
    result = run_cli(*RESUME_RUN, "balancer=famo", f"run_dir={reference_run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 240 steps per task" in result.stdout
    assert tb_scalars(reference_run, DETERMINISTIC_TAGS) == before


def test_checkpoint_of_another_config_is_refused_and_nothing_overwritten(reference_run: Path) -> None:
    config_before = (reference_run / "config.yaml").read_text()
    newest_before = (reference_run / checkpoint.LATEST).read_bytes()
    result = run_cli(*RESUME_RUN, "balancer=famo", "agent.hidden_dim=16", f"run_dir={reference_run}")
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "holds a checkpoint of a different run" in message
    assert "agent" in message and "move that directory away" in message
    assert (reference_run / "config.yaml").read_text() == config_before
    assert (reference_run / checkpoint.LATEST).read_bytes() == newest_before


# ----- the file layer alone (fast) ---------------------------------------------------------------
def test_save_keeps_previous_and_files_are_readable_by_others(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, {"env_step": 1})
    checkpoint.save(tmp_path, {"env_step": 2})
    assert checkpoint.load_latest(tmp_path)["env_step"] == 2
    assert checkpoint_step(tmp_path, checkpoint.PREVIOUS) == 1
    assert (tmp_path / checkpoint.LATEST).stat().st_mode & 0o044  # not mkstemp's private 0600
    assert not list(tmp_path.glob("*.tmp"))


def test_load_latest_falls_back_with_warning_then_refuses_when_nothing_is_readable(tmp_path: Path) -> None:
    assert checkpoint.load_latest(tmp_path) is None
    checkpoint.save(tmp_path, {"env_step": 1})
    checkpoint.save(tmp_path, {"env_step": 2})
    (tmp_path / checkpoint.LATEST).write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="resuming from the previous checkpoint"):
        assert checkpoint.load_latest(tmp_path)["env_step"] == 1
    (tmp_path / checkpoint.PREVIOUS).write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="No checkpoint"):
        checkpoint.load_latest(tmp_path)


def test_missing_newest_after_crash_between_renames_uses_previous(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, {"env_step": 1})
    checkpoint.save(tmp_path, {"env_step": 2})
    (tmp_path / checkpoint.LATEST).unlink()  # crash after `newest -> previous`, before `temp -> newest`
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint.load_latest(tmp_path)["env_step"] == 1
