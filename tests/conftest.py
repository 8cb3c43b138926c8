"""Shared fixtures: tiny real Metaworld envs and a helper to run the real CLI."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

# Tests use tiny networks: a second thread only adds overhead on these shared 2-core machines, where
# the suite already runs one pytest-xdist worker per core. Every process the tests start (CLI runs,
# scripts, their workers) inherits this unless the test sets a thread count itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtrl_famo.envs import EnvSpec, build_env
from mtrl_famo.envs.goal_cache import CACHE_DIR_VARIABLE

# Metaworld's goal draws are cached on disk (mtrl_famo.envs.goal_cache): unless MTRL_FAMO_CACHE_DIR is
# set already (e.g. `off`), the suite keeps its own cache, empty when the session starts, so that it does
# not read ~/.cache and every run does the same work. The process that starts first creates it; the xdist
# workers and every process the tests start inherit the variable and share it, as a user's processes
# share theirs. (A session killed before its exit handlers leaves the directory in the temp folder.)
if CACHE_DIR_VARIABLE not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="mtrl_famo-test-cache-")
    os.environ[CACHE_DIR_VARIABLE] = _SESSION_CACHE
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
HOOKS = Path(__file__).resolve().parent / "hooks"

# ----- the suite in parallel (pytest-xdist) and its fast tier -----------------------------------------
# pyproject.toml runs `-n auto --dist loadfile --no-loadscope-reorder` (auto: see
# `pytest_xdist_auto_num_workers` below): a test file's tests run on one worker and share its module
# fixtures, and the scheduler below keeps two files that share a session's runs on one worker too
# (pytest-xdist's own `loadgroup` cannot: it renames node ids, which pytest 9 ignores), while a SPLIT_FILES
# file's tests are spread like files. The workers take these units in the order set here: by seconds of
# each (2-core machine), the longest first, so that none of them starts last and keeps the suite waiting.
# A stale number only costs balance; a file not listed goes after these, in collection order.
FILE_CPU_S = {
    "test_slurm_sweep.py": 300,  # little CPU here, but minutes of waiting for its Slurm jobs: start it first
    "test_learning.py": 65,
    "test_resume.py": 100,
    "test_balancer_runs.py": 105,  # with test_cli.py (one group)
    "test_evaluate.py": 27,
    "test_env_tasks.py": 51,
    "test_video.py": 50,  # with test_wandb.py (one group)
    "test_env_workers.py": 43,
    "test_report.py": 33,
    "test_background_eval.py": 31,
    "test_presets.py": 14,
    "test_overlap.py": 13,
    "test_protocol_env.py": 22,
    "test_packaging.py": 19,
    "test_bench_train.py": 18,
    "test_trainer_loop.py": 14,
    "test_compile.py": 11,
    "test_callbacks.py": 10,
    "test_bench_update.py": 10,
    "test_network_runs.py": 40,  # wall seconds under load (no CPU measure yet)
    "test_resets.py": 25,
}
# Files that read the same session-scoped runs go to one worker, which then runs them once.
SHARED_GROUPS = {
    "test_cli.py": "test_balancer_runs.py",  # `tiny_cli_run`: tiny_balancer_runs reuses its mtsac and famo runs
    "test_wandb.py": "test_video.py",  # tests/observed_run.py: one CLI run with videos and W&B, stopped and resumed
}
# Files whose tests are independent units of work, each scheduled on its own like a file (a worker that
# runs one builds the file's module fixtures): test_toy.py is minutes of one core, too long for one worker
# while the others finish. Seconds of its longest tests (2-core machine); the others count as 0.
SPLIT_FILES = {
    "test_toy.py": {
        "test_cagrad_reaches_the_front_from_every_start_of_its_paper": 107,
        "test_mean_loss_stalls_from_both_top_starts_in_cagrad_setup": 30,
        "test_famo_reaches_the_front_from_every_start_of_its_paper": 26,
        "test_per_start_budgets_leave_the_other_runs_unchanged": 14,
        "test_runs_are_the_library_loop_with_the_learners_optimizer": 12,
        "test_main_writes_png_and_one_row_per_run": 9,
        "test_mean_loss_stalls_from_the_top_right_start_in_famo_setup": 8,
    },
}


def work_unit(nodeid: str) -> str:
    """What one worker runs as a whole: a file, a SHARED_GROUPS group, or one test (every parametrization)
    of a SPLIT_FILES file."""
    name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if name in SPLIT_FILES:
        return f"{name}::{nodeid.split('::', 1)[1].split('[', 1)[0]}"
    return SHARED_GROUPS.get(name, name)


def unit_seconds(unit: str) -> float:
    """The seconds a work unit is expected to take (FILE_CPU_S, SPLIT_FILES), for the order of the queue."""
    name, _, test = unit.partition("::")
    return SPLIT_FILES[name].get(test, 0) if test else FILE_CPU_S.get(name, 0)


# The `slow` tier: real training runs, CLI and script subprocesses, wheel builds, Slurm, MT10/MT50
# builds (each about 2 s of CPU or more). `pytest -m "not slow"` is the edit loop. Kept here, by
# test function (every parametrization), for the files whose owners mark nothing themselves; a
# name that no longer matches a collected test fails the session, so the list cannot go stale.
SLOW_TESTS = {
    "test_background_eval.py": (
        "test_background_run_logs_what_the_blocking_run_logs",
        "test_checkpoint_and_resume_with_background_evaluation_match_the_straight_run",
        "test_result_is_the_blocking_evaluation_of_the_snapshot_taken_at_submit",
    ),
    "test_balancer_runs.py": ("*",),  # every test reads the multirun of every balancer
    "test_bench_update.py": ("test_tiny_benchmark_runs_every_balancer", "test_bad_input_is_one_line"),
    "test_bench_against.py": ("*",),
    "test_cli.py": (
        "test_bad_input_through_a_real_subprocess",
        "test_run_writes_tensorboard_with_success_tags",
        "test_same_seed_same_losses",
        "test_default_run_dir_is_deterministic",
    ),
    "test_evaluate.py": (
        "test_evaluate_cli_table_json_and_untouched_run",
        "test_evaluate_needs_neither_the_replay_file_nor_the_training_memory",
        "test_evaluator_checkpoint_resumes_the_goal_sequence",
        "test_metaworld_protocol_is_metaworlds_own_evaluation",
        "test_metaworld_protocol_stops_episodes_at_first_success",
        "test_metaworld_protocol_visits_every_goal_once",
    ),
    "test_network_runs.py": ("*",),  # every test reads (or is) a tiny run of each network
    "test_resets.py": ("test_a_run_resumed_across_a_reset_equals_the_straight_run", "test_resets_change_the_run"),
    "test_overlap.py": (
        "test_overlapped_run_resumed_from_checkpoint_equals_straight_run",
        "test_sequential_loop_is_act_step_store_update",
    ),
    "test_presets.py": ("test_preset_trains_a_few_hundred_steps_on_two_tasks",),
    "test_report.py": (
        "test_cli_bad_sweep_dir_exits_2_with_one_sentence",
        "test_cli_writes_into_out_dir",
        "test_report_of_a_real_tiny_sweep_matches_its_event_files",
    ),
    "test_resume.py": (
        "test_checkpoint_every_not_a_multiple_of_the_episode_length",
        "test_checkpoint_of_another_config_is_refused_and_nothing_overwritten",
        "test_finished_run_relaunched_stays_finished",
        "test_finished_run_with_more_steps_trains_on_exactly",
        "test_kill9_and_corrupted_newest_checkpoint_fall_back_and_still_match",
        "test_sigterm_checkpoints_and_resume_matches_uninterrupted",
        "test_steps_not_a_multiple_of_eval_every_still_evaluates_at_the_end",
    ),
    "test_toy.py": (
        "test_cagrad_reaches_the_front_from_every_start_of_its_paper",
        "test_famo_reaches_the_front_from_every_start_of_its_paper",
        "test_main_writes_png_and_one_row_per_run",
        "test_mean_loss_stalls_from_both_top_starts_in_cagrad_setup",
        "test_mean_loss_stalls_from_the_top_right_start_in_famo_setup",
    ),
}


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark SLOW_TESTS `slow` as soon as the test is collected (before `-m` deselects)."""
    names = SLOW_TESTS.get(item.path.name, ())
    if "*" in names or getattr(item, "originalname", item.name) in names:
        item.add_marker(pytest.mark.slow)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """What `-n auto` means here: one worker per core this process may use, plus one. Many tests wait on
    processes they start (CLI runs, Slurm jobs and their scheduling, evaluation workers), and the extra
    worker keeps the cores busy meanwhile (full suite on this 2-core machine, one run each, an hour
    apart: 489 s with 2 workers, 466 s with 3)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores + 1


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, with `work_unit`s instead of files: a SHARED_GROUPS group is one unit, a SPLIT_FILES
    file's tests are one each."""
    if config.getvalue("dist") != "loadfile":
        return None  # pytest-xdist's own scheduler for the mode asked for
    from xdist.scheduler import LoadScopeScheduling

    class SharedFileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return SharedFileScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check that SLOW_TESTS and SPLIT_FILES name existing tests, and order the work units by their seconds (each unit's
    tests together and in their own order; the workers take them in this order)."""
    modules = {}
    for item in items:
        modules.setdefault(item.path.name, getattr(item, "module", None))
    for table_name, table in (("SLOW_TESTS", SLOW_TESTS), ("SPLIT_FILES", SPLIT_FILES)):
        stale = [
            f"{file}::{name}"
            for file, module in modules.items()
            for name in table.get(file, ())
            if module is not None and name != "*" and not hasattr(module, name)
        ]
        if stale:
            listed = ", ".join(stale)
            raise pytest.UsageError(f"tests/conftest.py's {table_name} names tests that do not exist: {listed}")

    units = {item.nodeid: work_unit(item.nodeid) for item in items}
    position = {unit: index for index, unit in enumerate(dict.fromkeys(units.values()))}
    items.sort(key=lambda item: (-unit_seconds(units[item.nodeid]), position[units[item.nodeid]]))


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
    returns (working directory, completed process). The run lives in `runs/custom/multihead/<name>/seed=0`
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
    # In-process sub-envs (env.vector_strategy=sync): no env worker to fork and feed for each of these runs,
    # which are about the balancers; the default workers path is tiny_cli_run's (mtsac and famo).
    result = run_cli(
        "-m",
        *TINY_RUN,
        "env.vector_strategy=sync",
        f"balancer={','.join(others)}",
        f"hydra.sweep.dir={sweep}",
        cwd=sweep.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = {name: sweep / "custom" / "multihead" / name / "seed=0" for name in others}
    for name in SINGLE_RUN_BALANCERS:
        dirs[name] = tiny_cli_run(name)[0] / "runs" / "custom" / "multihead" / name / "seed=0"
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


# Subprocesses get no deadline of their own by default: a loaded machine only makes them slower, and a
# test must not fail for that. A hung one is ended by pytest-timeout (pyproject.toml), whose interrupt
# makes `subprocess.run` kill the child on the way out.
def run_cli(
    *overrides: str, cwd: Path | None = None, timeout: float | None = None, scripted_success: bool = False
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


def cli_in_process(*overrides: str) -> SimpleNamespace:
    """`run_cli` in this process: `python -m mtrl_famo.train *overrides` through its `cli()`, the module's
    entry point, with stdout and stderr captured. For runs whose point is not a process boundary (a
    reference run, a resumption after SIGTERM, a relaunch, a refusal): an interpreter start-up costs more
    than most of them. Warnings are not on its stderr here (pytest records them), so a test of a warning's
    text uses `run_cli`. Returns (returncode, stdout, stderr)."""
    from mtrl_famo import train

    stdout, stderr = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["mtrl_famo.train", *overrides]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            train.cli()
        code = 0
    except SystemExit as error:
        code = error.code or 0
    finally:
        sys.argv = argv
    return SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def run_script(name: str, *arguments: str, timeout: float | None = None) -> subprocess.CompletedProcess:
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


def wait_for(path: Path, process: subprocess.Popen, timeout: float | None = None) -> None:
    """Wait until `path` exists; fail at once if the process ends first. No deadline unless `timeout`
    is given: however slow a loaded machine is, the run either gets there or ends (a hang is
    pytest-timeout's to end)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            output = process.communicate()
            pytest.fail(f"the run ended before {path.name} appeared: {(output[1] or output[0] or '')[-3000:]}")
        assert deadline is None or time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
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
