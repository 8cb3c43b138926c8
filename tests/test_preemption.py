"""PreemptionGuard in process: real signals sent to ourselves with `os.kill`.

Signals are only ever sent while a guard is installed (and after checking that it is), so a
broken guard fails a test instead of killing pytest with the default action of SIGUSR2/SIGTERM.
The `previous` fixture puts pytest's own handlers back after every test.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from mtrl_famo.preemption import CAUGHT_SIGNALS, PreemptionGuard

BOTH = pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM], ids=["USR2", "TERM"])


@pytest.fixture
def previous():
    """`previous(handler)` installs `handler` for both caught signals as the 'earlier' handler;
    pytest's own handlers are restored afterwards whatever happens."""
    saved = {signum: signal.getsignal(signum) for signum in CAUGHT_SIGNALS}

    def install(handler):
        for signum in CAUGHT_SIGNALS:
            signal.signal(signum, handler)
        return handler

    try:
        yield install
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def send(guard: PreemptionGuard, signum: int) -> None:
    """Send `signum` to this process, only while `guard` holds it, and wait until it is flagged."""
    assert signal.getsignal(signum) == guard._flag, "guard not installed: refusing to send the signal"
    os.kill(os.getpid(), signum)
    while guard.pending != signum:  # no deadline: a loaded machine only delays it (a hang: pytest-timeout)
        time.sleep(0.001)


class Recorder:
    """An earlier Python handler that returns, like submitit's SIGTERM `bypass` (it only logs)."""

    def __init__(self):
        self.calls: list[tuple[int, object]] = []

    def __call__(self, signum, frame):
        self.calls.append((signum, frame))


def train_loop(guard: PreemptionGuard, ckpt_dir, signal_at: int, signum: int, steps: int = 10) -> list[int]:
    """A stand-in for Trainer.train: the signal arrives mid-run; at the next step boundary a
    pending signal makes the loop save a checkpoint, then hand the signal over."""
    done = []
    for step in range(steps):
        if step == signal_at:
            send(guard, signum)
            done.append(-1)  # the code right after the kill runs: the signal did not kill us
        done.append(step)
        if guard.pending is not None:
            (ckpt_dir / f"ckpt_{step}.txt").write_text(f"{step} {guard.pending.name}")
            guard.hand_over()
    return done


# ----- default action (no submitit): flag, checkpoint, then exit 128+signum ------------------


@BOTH
def test_default_action_only_flags_then_checkpoint_then_exit(previous, tmp_path, signum):
    previous(signal.SIG_DFL)
    with pytest.raises(SystemExit) as exit_info, PreemptionGuard() as guard:
        train_loop(guard, tmp_path, signal_at=3, signum=signum)
    assert exit_info.value.code == 128 + int(signum)
    # The loop was still running after the kill and saved before exiting, at that very step.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_3.txt"]
    assert (tmp_path / "ckpt_3.txt").read_text() == f"3 {signal.Signals(signum).name}"
    assert guard.pending is None
    # Leaving through SystemExit restored the default action.
    assert all(signal.getsignal(s) == signal.SIG_DFL for s in CAUGHT_SIGNALS)


@BOTH
def test_signal_sets_pending_and_code_after_kill_runs(previous, signum):
    previous(signal.SIG_DFL)
    with PreemptionGuard() as guard:
        assert guard.pending is None
        send(guard, signum)  # we are still here: the signal did not end the process
        assert guard.pending == signum
        assert isinstance(guard.pending, signal.Signals)
        with pytest.raises(SystemExit) as exit_info:
            guard.hand_over()
    assert exit_info.value.code == 128 + int(signum)


# ----- earlier handler ignores: training goes on -----------------------------------------------


@BOTH
def test_ignored_signal_is_handed_over_and_training_goes_on(previous, tmp_path, signum):
    previous(signal.SIG_IGN)
    with PreemptionGuard() as guard:
        done = train_loop(guard, tmp_path, signal_at=3, signum=signum)
        assert guard.pending is None
    assert done == [0, 1, 2, -1, 3, 4, 5, 6, 7, 8, 9]
    assert (tmp_path / "ckpt_3.txt").exists()
    assert all(signal.getsignal(s) == signal.SIG_IGN for s in CAUGHT_SIGNALS)


# ----- earlier Python handler that returns ----------------------------------------------------


def test_returning_handler_gets_usr2_and_training_goes_on(previous, tmp_path):
    recorder = previous(Recorder())
    with PreemptionGuard() as guard:
        send(guard, signal.SIGUSR2)
        assert recorder.calls == []  # the signal went to the guard, not to the earlier handler
        guard.hand_over()  # returns: the earlier handler asked for no stop
        assert recorder.calls == [(int(signal.SIGUSR2), None)]
        assert guard.pending is None
        done = train_loop(guard, tmp_path, signal_at=5, signum=signal.SIGUSR2)
    assert done == [0, 1, 2, 3, 4, -1, 5, 6, 7, 8, 9]
    assert [c[0] for c in recorder.calls] == [int(signal.SIGUSR2)] * 2


def test_returning_handler_gets_term_and_the_run_still_exits(previous, tmp_path):
    recorder = previous(Recorder())
    with pytest.raises(SystemExit) as exit_info, PreemptionGuard() as guard:
        train_loop(guard, tmp_path, signal_at=2, signum=signal.SIGTERM)
    assert recorder.calls == [(int(signal.SIGTERM), None)]  # logged first, then the exit
    assert exit_info.value.code == 128 + int(signal.SIGTERM) == 143
    assert (tmp_path / "ckpt_2.txt").exists()
    assert signal.getsignal(signal.SIGTERM) is recorder


# ----- earlier handler that exits or raises itself (submitit's requeue) ----------------------


class Requeue(Exception):
    pass


@BOTH
@pytest.mark.parametrize("how", ["exit", "raise"])
def test_exiting_or_raising_handler_propagates(previous, tmp_path, signum, how):
    calls = []

    def requeue(sig, frame):
        calls.append(sig)
        if how == "exit":
            sys.exit(-1)  # what submitit's checkpoint_and_try_requeue ends with
        raise Requeue("not requeued")  # submitit's UncompletedJobError path

    previous(requeue)
    expected = SystemExit if how == "exit" else Requeue
    with pytest.raises(expected) as raised, PreemptionGuard() as guard:
        train_loop(guard, tmp_path, signal_at=4, signum=signum)
    assert calls == [int(signum)]
    if how == "exit":
        assert raised.value.code == -1  # the handler's own exit, not 128+signum
    assert (tmp_path / "ckpt_4.txt").exists()
    assert signal.getsignal(signum) is requeue


# ----- handlers restored ----------------------------------------------------------------------


@pytest.mark.parametrize("earlier", ["default", "ignore", "python"])
@pytest.mark.parametrize("leave", ["normally", "exception"])
def test_handlers_restored_on_exit(previous, earlier, leave):
    handler = {"default": signal.SIG_DFL, "ignore": signal.SIG_IGN, "python": Recorder()}[earlier]
    previous(handler)
    guard = PreemptionGuard()
    try:
        with guard:
            for signum in CAUGHT_SIGNALS:
                assert signal.getsignal(signum) == guard._flag
            if leave == "exception":
                raise KeyError("boom")
    except KeyError:
        assert leave == "exception"
    else:
        assert leave == "normally"
    for signum in CAUGHT_SIGNALS:
        restored = signal.getsignal(signum)
        assert restored is handler or restored == handler
        assert restored != guard._flag


def test_exception_in_block_is_not_swallowed(previous):
    previous(signal.SIG_IGN)
    with pytest.raises(ZeroDivisionError), PreemptionGuard():
        _ = 1 / 0


def test_nested_guards_restore_in_order(previous):
    recorder = previous(Recorder())
    with PreemptionGuard() as outer:
        with PreemptionGuard() as inner:
            assert signal.getsignal(signal.SIGUSR2) == inner._flag
        assert signal.getsignal(signal.SIGUSR2) == outer._flag
    assert signal.getsignal(signal.SIGUSR2) is recorder


def test_guard_off_the_main_thread_installs_nothing(previous):
    recorder = previous(Recorder())
    seen = {}

    def worker():
        with PreemptionGuard() as guard:
            seen["inside"] = signal.getsignal(signal.SIGUSR2)
            seen["previous"] = dict(guard._previous)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"inside": recorder, "previous": {}}
    assert signal.getsignal(signal.SIGUSR2) is recorder


# ----- several signals, and nothing pending ---------------------------------------------------


def test_second_signal_replaces_first_usr2_then_term(previous):
    recorder = previous(Recorder())
    with PreemptionGuard() as guard:
        send(guard, signal.SIGUSR2)
        assert guard.pending == signal.SIGUSR2
        send(guard, signal.SIGTERM)
        assert guard.pending == signal.SIGTERM
        with pytest.raises(SystemExit) as exit_info:
            guard.hand_over()
    assert recorder.calls == [(int(signal.SIGTERM), None)]
    assert exit_info.value.code == 143


def test_second_signal_replaces_first_term_then_usr2(previous):
    recorder = previous(Recorder())
    with PreemptionGuard() as guard:
        send(guard, signal.SIGTERM)
        send(guard, signal.SIGUSR2)
        assert guard.pending == signal.SIGUSR2
        guard.hand_over()  # only the latest is handed over: USR2 to a returning handler goes on
        assert guard.pending is None
        guard.hand_over()
    assert recorder.calls == [(int(signal.SIGUSR2), None)]


@pytest.mark.parametrize("earlier", ["default", "python"])
def test_hand_over_with_nothing_pending_is_a_no_op(previous, earlier):
    recorder = Recorder()
    previous(signal.SIG_DFL if earlier == "default" else recorder)
    with PreemptionGuard() as guard:
        guard.hand_over()  # no SystemExit although the default action is to die
        send(guard, signal.SIGUSR2)
        if earlier == "default":
            with pytest.raises(SystemExit):
                guard.hand_over()
        else:
            guard.hand_over()
        guard.hand_over()  # the signal was consumed: nothing handed over twice
    assert recorder.calls == ([] if earlier == "default" else [(int(signal.SIGUSR2), None)])
    guard.hand_over()  # also outside the block
