"""Trainer callbacks (the seam scripts use instead of patching the trainer) and the update timer."""

from __future__ import annotations

import json

import pytest
import torch

from mtrl_famo import checkpoint
from mtrl_famo.callbacks import Callback, Stop, WallClockLimit
from mtrl_famo.run_files import SUMMARY_FILE
from mtrl_famo.timing import UpdateTimer
from mtrl_famo.trainer import Trainer

from conftest import tb_scalars
from tiny_setup import tiny_trainer

# tiny_trainer: 5-step episodes (resume points are multiples of 5), 30 steps, eval every 15, log every 4.


class StopAt(Callback):
    """Asks for `how` once env_step reaches `step`; records every step it saw."""

    def __init__(self, step: int, how: Stop):
        self.step, self.how, self.seen = step, how, []

    def on_step_end(self, trainer: Trainer) -> Stop | None:
        self.seen.append(trainer.env_step)
        return self.how if trainer.env_step >= self.step else None


def test_stop_now_leaves_at_that_step_and_writes_no_checkpoint_or_summary(tmp_path) -> None:
    trainer = tiny_trainer(tmp_path / "run")
    callback = StopAt(7, Stop.NOW)
    summary = trainer.train(callbacks=[callback])
    assert callback.seen == list(range(1, 8))
    assert trainer.env_step == 7 and summary["env_steps"] == 7 and not summary["complete"]
    assert checkpoint.load_latest(tmp_path / "run") is None
    assert not (tmp_path / "run" / SUMMARY_FILE).exists()


@pytest.mark.slow
def test_stop_at_resume_point_evaluates_checkpoints_and_the_run_continues(tmp_path) -> None:
    run_dir = tmp_path / "run"
    trainer = tiny_trainer(run_dir)
    summary = trainer.train(callbacks=[StopAt(7, Stop.AT_RESUME_POINT)])
    # Asked mid-episode at step 7: the loop goes on to the episode end at 10, the next exact resume point.
    assert trainer.env_step == 10 and summary["env_steps"] == 10 and not summary["complete"]
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["env_steps"] == 10
    assert checkpoint.load_latest(run_dir)["collector"]["env_step"] == 10
    assert [step for step, _ in tb_scalars(run_dir)["eval/success_rate"]] == [10]  # a final evaluation there

    resumed = tiny_trainer(run_dir)
    assert resumed.train()["complete"] and resumed.env_step == 30
    assert [step for step, _ in tb_scalars(run_dir)["eval/success_rate"]] == [10, 15, 30]


def test_wall_clock_limit_counts_from_the_first_step_and_refuses_a_non_positive_budget() -> None:
    limit = WallClockLimit(3600.0)
    assert limit.on_step_end(None) is None and limit.on_step_end(None) is None
    limit._deadline = 0.0  # the budget has run out
    assert limit.on_step_end(None) is Stop.AT_RESUME_POINT
    with pytest.raises(ValueError, match="positive number of seconds, got 0"):
        WallClockLimit(0)


def test_update_timer_accumulates_host_time_and_on_the_cpu_device_time_is_host_time() -> None:
    timer = UpdateTimer(torch.device("cpu"))
    assert timer.host_seconds == 0.0 and timer.device_seconds() == 0.0
    for _ in range(2):
        with timer.measure():
            torch.ones(200, 200) @ torch.ones(200, 200)
    first = timer.host_seconds
    assert first > 0 and timer.device_seconds() == first
    with pytest.raises(RuntimeError), timer.measure():
        raise RuntimeError("an update that fails is still timed")
    assert timer.host_seconds > first


def test_logged_update_ms_is_the_timers_time_per_update_in_the_window(tmp_path) -> None:
    trainer = tiny_trainer(tmp_path / "run")
    timings = []

    class Record(Callback):
        def on_step_end(self, trainer: Trainer) -> Stop | None:
            if trainer.env_step % 4 == 0:  # log.every: the trainer logged this window just now
                timings.append(trainer.update_timer.host_seconds)
            return Stop.NOW if trainer.env_step == 12 else None

    trainer.train(callbacks=[Record()])
    logged = dict(tb_scalars(tmp_path / "run")["perf/update_ms"])
    # Updates start after the 3 warm-up steps: window 4 has one, windows 8 and 12 four each.
    assert logged[4] == pytest.approx(1e3 * timings[0], rel=1e-5)
    assert logged[8] == pytest.approx(1e3 * (timings[1] - timings[0]) / 4, rel=1e-5)
    assert logged[12] == pytest.approx(1e3 * (timings[2] - timings[1]) / 4, rel=1e-5)
