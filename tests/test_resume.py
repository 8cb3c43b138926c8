"""Checkpoint/resume: an interrupted CPU run, resumed, ends exactly like an uninterrupted one.

Interrupted runs are held by tests/hooks at a step the test chooses until the test's signal has
reached them, so where a run stops never depends on how fast this machine happens to be.
"""

from __future__ import annotations

import json
import signal
import warnings
from pathlib import Path

import pytest
import torch

from mtrl_famo import checkpoint
from mtrl_famo.config import compose

from conftest import DETERMINISTIC_TAGS, TINY_RUN, cli_in_process, run_cli, start_cli, tb_scalars, wait_for

# 40-step episodes, checkpoints at every episode end: interruptions land between checkpoints.
RESUME_RUN = [*TINY_RUN, "steps=240", "checkpoint.every=40", "log.every=10"]
# The interrupted runs evaluate in the background (the default): signals and checkpoints with the eval
# worker alive. The straight reference and the resumptions evaluate in process (eval.background=false,
# TINY_RUN's): the same results (tests/test_background_eval.py), a key that may change on resume
# (comparable_config), and no evaluation interpreter to start (~3 s of CPU each).
INTERRUPTED = "eval.background=true"


def interrupt_at(step: int, signum: signal.Signals, run_dir: Path, *overrides: str) -> str:
    """Run the CLI, hold it right after `step`, send `signum`, wait for the end; returns stderr."""
    marker = run_dir.parent / f"{run_dir.name}.paused"
    process = start_cli(
        *RESUME_RUN, "balancer=famo", INTERRUPTED, f"run_dir={run_dir}", *overrides, pause_at=step, marker=marker
    )
    wait_for(marker, process)
    process.send_signal(signum)
    # No deadline: the run has ended once it has exited and its pipes are closed (a SIGKILLed run's
    # evaluation worker holds them until it sees its trainer gone); a hang is pytest-timeout's to end.
    process.wait()
    _, stderr = process.communicate()
    expected = -signal.SIGKILL if signum == signal.SIGKILL else 128 + signum
    assert process.returncode == expected, stderr[-3000:]
    return stderr


def checkpoint_step(run_dir: Path, name: str = checkpoint.LATEST) -> int:
    return int(torch.load(run_dir / name, map_location="cpu", weights_only=False)["collector"]["env_step"])


def assert_same_run(reference: Path, resumed: Path) -> None:
    expected, got = tb_scalars(reference, DETERMINISTIC_TAGS), tb_scalars(resumed, DETERMINISTIC_TAGS)
    assert {"loss/critic", "loss/actor", "eval/return", "eval/success_rate", "train/success_rate"} <= set(expected)
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
    """The straight run that every interrupted and resumed run must match, through the CLI in process."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = cli_in_process(*RESUME_RUN, "balancer=famo", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(reference_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    interrupt_at(100, signal.SIGTERM, run_dir, "checkpoint.every=0")  # mid-episode
    assert checkpoint_step(run_dir) == 120  # saved at the next episode end, then the run stopped
    assert not (run_dir / checkpoint.PREVIOUS).exists()  # checkpoint.every=0: no periodic saves
    assert not (run_dir / "summary.json").exists()

    result = cli_in_process(*RESUME_RUN, "balancer=famo", f"run_dir={run_dir}", "checkpoint.every=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(reference_run, run_dir)


def test_kill9_and_corrupted_newest_checkpoint_fall_back_and_still_match(reference_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    interrupt_at(130, signal.SIGKILL, run_dir)  # killed 10 steps after the checkpoint at 120
    assert (checkpoint_step(run_dir), checkpoint_step(run_dir, checkpoint.PREVIOUS)) == (120, 80)
    assert not (run_dir / "summary.json").exists()
    # Corrupt the newest: the run must say so and continue from the previous good one.
    data = (run_dir / checkpoint.LATEST).read_bytes()
    (run_dir / checkpoint.LATEST).write_bytes(data[: len(data) // 2])

    result = run_cli(*RESUME_RUN, "balancer=famo", f"run_dir={run_dir}")  # a subprocess: the warning on stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not be read; resuming from the previous checkpoint" in result.stderr
    assert_same_run(reference_run, run_dir)


def test_finished_run_relaunched_stays_finished(reference_run: Path) -> None:
    before = tb_scalars(reference_run, DETERMINISTIC_TAGS)
    result = cli_in_process(*RESUME_RUN, "balancer=famo", f"run_dir={reference_run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 240 steps per task" in result.stdout
    assert tb_scalars(reference_run, DETERMINISTIC_TAGS) == before


def test_checkpoint_of_another_config_is_refused_and_nothing_overwritten(reference_run: Path) -> None:
    config_before = (reference_run / "config.yaml").read_text()
    newest_before = (reference_run / checkpoint.LATEST).read_bytes()
    result = cli_in_process(*RESUME_RUN, "balancer=famo", "agent.hidden_dim=16", f"run_dir={reference_run}")
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
    assert torch.load(tmp_path / checkpoint.PREVIOUS, weights_only=False)["env_step"] == 1
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


# ----- resume paths in process (fast: no interpreter start-up) -----------------------------------
# Three tasks, so that PCGrad's random projection order matters (with two it cannot), and 20-step
# episodes: episode ends (the exact resume points) at every multiple of 20.
IN_PROCESS_RUN = [
    "env=custom",
    "env.tasks=[reach-v3,push-v3,pick-place-v3]",
    "env.max_episode_steps=20",
    "agent.hidden_dim=32",
    "agent.num_layers=2",
    "agent.batch_size_per_task=8",
    "agent.warmup_steps=20",
    "eval.every=20",
    "eval.episodes=1",
    "log.every=10",
    "log.conflicts_every=3",
    "progress=false",
    "device=cpu",
    # In process, not in a spawned worker: the same results (tests/test_background_eval.py) without an
    # interpreter start-up and import per run.
    "eval.background=false",
]
# The tests of the schedule alone (mtsac: no balancer state) need no third task: two, one env build less.
TWO_TASKS = "env.tasks=[reach-v3,push-v3]"


def train_in_process(run_dir: Path, *overrides: str) -> dict:
    from mtrl_famo.trainer import Trainer

    return Trainer(compose(*IN_PROCESS_RUN, f"run_dir={run_dir}", *overrides)).train()


# FAMO's state (logits, Adam moments) goes through the same path in the CLI resume tests above.
@pytest.mark.parametrize("balancer", ["pcgrad", "cagrad"])
def test_finished_run_with_more_steps_trains_on_exactly(balancer: str, tmp_path: Path) -> None:
    """A finished run re-launched with a larger `steps` continues from its final checkpoint and ends
    exactly like a run that was given the larger `steps` from the start. The checkpoint lies after
    two evaluations, so the evaluation env's goal RNG must come back too (evaluations at 80 and 100
    draw new goals from it), and after many updates, so must the balancer's state (PCGrad's order
    generator, CAGrad's warm start, FAMO's logits and their Adam moments)."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    train_in_process(reference, f"balancer={balancer}", "steps=100")
    first = train_in_process(run, f"balancer={balancer}", "steps=60")
    assert first["env_steps"] == 60 and first["complete"]
    assert checkpoint_step(run) == 60

    summary = train_in_process(run, f"balancer={balancer}", "steps=100")

    assert summary["env_steps"] == 100 and summary["complete"]
    expected, got = tb_scalars(reference, DETERMINISTIC_TAGS), tb_scalars(run, DETERMINISTIC_TAGS)
    assert {"loss/critic", "loss/actor", "eval/return", "train/success_rate"} <= set(expected)
    assert set(got) == set(expected)
    for tag, points in expected.items():
        assert got[tag] == points, f"{tag} differs from the run that had steps=100 from the start"
    assert [step for step, _ in got["eval/success_rate"]] == [20, 40, 60, 80, 100]
    if balancer != "famo":
        assert "balancer/grad_cosine_min" in got


def test_checkpoint_every_not_a_multiple_of_the_episode_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint.every=30 with 20-step episodes: a save at the first episode end at or after each
    multiple of 30 (30->40, 60->60, 90->100, 120->120), and the last one at the end."""
    from mtrl_famo.trainer import Trainer

    saved: list[int] = []
    original = Trainer.save_checkpoint
    monkeypatch.setattr(Trainer, "save_checkpoint", lambda self: (saved.append(self.env_step), original(self))[1])
    train_in_process(tmp_path / "run", "balancer=mtsac", TWO_TASKS, "steps=120", "checkpoint.every=30", "eval.every=60")
    assert saved == [40, 60, 100, 120]
    assert checkpoint_step(tmp_path / "run") == 120


def test_steps_not_a_multiple_of_eval_every_still_evaluates_at_the_end(tmp_path: Path) -> None:
    summary = train_in_process(tmp_path / "run", "balancer=mtsac", TWO_TASKS, "steps=50", "eval.every=20")
    steps = [step for step, _ in tb_scalars(tmp_path / "run", ("eval/success_rate",))["eval/success_rate"]]
    assert steps == [20, 40, 50]
    assert summary["env_steps"] == 50 and summary["eval_success_rate"] is not None


def test_comparable_config_ignores_what_may_change_on_resume_and_keeps_what_changes_results() -> None:
    """The speed keys (vector strategy, workers, background evaluation) may change between a checkpoint
    and its resumption; the loop's overlap, which changes which replay the updates see, may not."""
    import dataclasses

    from mtrl_famo.trainer import comparable_config

    def as_dict(*overrides: str) -> dict:
        return dataclasses.asdict(compose(*TINY_RUN, *overrides))

    sequential = as_dict("env.vector_strategy=sync", "loop.overlap=false", "eval.background=false")
    assert comparable_config(sequential) == comparable_config(
        as_dict("env.vector_strategy=workers", "env.workers=2", "loop.overlap=false", "eval.background=true")
    )
    assert comparable_config(sequential) != comparable_config(as_dict("env.vector_strategy=sync", "loop.overlap=true"))
    assert comparable_config(sequential) != comparable_config(as_dict("seed=1", "loop.overlap=false"))
