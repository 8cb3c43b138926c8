"""Metaworld's goal draws on disk (mtrl_famo.envs.goal_cache): what a later process reads is exactly
Metaworld's own draw, and a bad, foreign or incomplete file is never used."""

from __future__ import annotations

import importlib.metadata
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import metaworld
import pytest

from mtrl_famo.envs import goal_cache
from mtrl_famo.envs.builder import metaworld_benchmark
from mtrl_famo.envs.goal_cache import CACHE_DIR_VARIABLE, GOALS_PER_TASK, cache_dir, cache_path, load_or_draw


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache directory for this test, and no benchmark held by the process before or after it."""
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    metaworld_benchmark.cache_clear()
    yield tmp_path / "cache"
    metaworld_benchmark.cache_clear()


def fake_benchmark(tasks: list[str], goals: int = GOALS_PER_TASK) -> SimpleNamespace:
    """A stand-in with Metaworld's shape: a class table and `goals` Task tuples of each task."""
    return SimpleNamespace(
        train_classes=dict.fromkeys(tasks, object),
        train_tasks=[
            metaworld.Task(env_name=name, data=pickle.dumps({"goal": goal})) for name in tasks for goal in range(goals)
        ],
    )


class CountingDraw:
    def __init__(self, benchmark: SimpleNamespace):
        self.benchmark, self.calls = benchmark, 0

    def __call__(self) -> SimpleNamespace:
        self.calls += 1
        return self.benchmark


def test_what_a_later_process_reads_is_metaworlds_own_draw(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = metaworld_benchmark("reach-v3", 3)
    assert cache_path("reach-v3", 3).is_file()
    own = metaworld.MT1("reach-v3", seed=3)  # Metaworld's draw, made here without the cache
    assert metaworld_benchmark("reach-v3", 4).train_tasks != drawn.train_tasks  # each seed its own draw
    # As a new process would: nothing held in memory, and drawing again is an error.
    metaworld_benchmark.cache_clear()
    monkeypatch.setattr(metaworld, "_make_tasks", lambda *args, **kwargs: pytest.fail("drawn again"))
    read = metaworld_benchmark("reach-v3", 3)
    for benchmark in (drawn, read):
        assert list(benchmark.train_classes.items()) == list(own.train_classes.items())
        assert benchmark.train_tasks == own.train_tasks  # (env_name, pickled goal data), bit for bit
    assert len(read.train_tasks) == GOALS_PER_TASK


def test_a_damaged_foreign_or_incomplete_file_is_drawn_again_and_replaced(cache: Path) -> None:
    path = cache_path("reach-v3", 0)
    good = fake_benchmark(["reach-v3"])
    unreadable = fake_benchmark(["reach-v3"])
    unreadable.train_tasks[7] = metaworld.Task(env_name="reach-v3", data=b"\x80\x05not the goal's pickle")
    for bad in (
        b"not a pickle",
        pickle.dumps(fake_benchmark(["reach-v3"], goals=3)),  # fewer goals than Metaworld draws
        pickle.dumps(fake_benchmark(["push-v3"])),  # another task's class table
        pickle.dumps(SimpleNamespace(train_tasks=[])),  # not a benchmark
        pickle.dumps(unreadable),  # goals pickled by code this process cannot load
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bad)
        draw = CountingDraw(good)
        assert load_or_draw("reach-v3", 0, ["reach-v3"], draw) is good
        assert draw.calls == 1
        with path.open("rb") as handle:
            assert pickle.load(handle).train_tasks == good.train_tasks
        assert load_or_draw("reach-v3", 0, ["reach-v3"], draw).train_tasks == good.train_tasks
        assert draw.calls == 1  # the replaced file is read


def test_an_incomplete_draw_is_returned_but_never_kept(cache: Path) -> None:
    """A goal-less stub (tests/test_mt25.py builds MT25's class table that way) must not reach other processes."""
    draw = CountingDraw(fake_benchmark(["reach-v3", "push-v3"], goals=0))
    for _ in range(2):
        assert load_or_draw("mt2", 0, ["reach-v3", "push-v3"], draw) is draw.benchmark
    assert draw.calls == 2 and not cache_path("mt2", 0).exists()


def test_off_draws_in_every_process_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_DIR_VARIABLE, "OFF")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() is None and cache_path("reach-v3", 0) is None
    draw = CountingDraw(fake_benchmark(["reach-v3"]))
    for _ in range(2):
        load_or_draw("reach-v3", 0, ["reach-v3"], draw)
    assert draw.calls == 2 and list(tmp_path.iterdir()) == []


def test_where_the_cache_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_DIR_VARIABLE, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "mtrl_famo"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG spec: ignored
    assert cache_dir() == tmp_path / "home" / ".cache" / "mtrl_famo"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mtrl_famo"
    monkeypatch.setenv(CACHE_DIR_VARIABLE, "~/mine")
    assert cache_dir() == tmp_path / "home" / "mine"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CACHE_DIR_VARIABLE, "mine")  # one directory, whatever a run's working directory
    assert cache_dir() == tmp_path / "mine"
    # Kept under the installed versions of what the draw and its pickles depend on.
    versions = [f"py{sys.version_info[0]}.{sys.version_info[1]}"] + [
        f"{name}-{importlib.metadata.version(name)}" for name in ("metaworld", "mujoco", "numpy")
    ]
    assert cache_path("mt10", 1) == tmp_path / "mine" / "metaworld-goals" / "_".join(versions) / "mt10_seed1.pkl"
    # Files of other Metaworld or MuJoCo versions are never read: each pair has its own folder.
    monkeypatch.setattr(goal_cache, "_versions", lambda: "metaworld-0.0_mujoco-0.0")
    assert (
        cache_path("mt10", 1) == tmp_path / "mine" / "metaworld-goals" / "metaworld-0.0_mujoco-0.0" / "mt10_seed1.pkl"
    )


def test_nothing_is_cached_without_a_home_or_a_released_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CACHE_DIR_VARIABLE, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "home", no_home)
        assert cache_dir() is None and cache_path("reach-v3", 0) is None

    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path))
    installed = importlib.metadata.distribution

    def unknown(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    def from_a_checkout(name: str):  # pip's record of an install from a local tree or a VCS URL
        distribution = installed(name)
        return SimpleNamespace(
            version=distribution.version, read_text=lambda file: "{}" if name == "metaworld" else None
        )

    for distribution in (unknown, from_a_checkout):
        monkeypatch.setattr(importlib.metadata, "distribution", distribution)
        assert cache_path("reach-v3", 0) is None, distribution
    draw = CountingDraw(fake_benchmark(["reach-v3"]))
    for _ in range(2):
        load_or_draw("reach-v3", 0, ["reach-v3"], draw)
    assert draw.calls == 2 and list(tmp_path.iterdir()) == []


def test_a_process_that_changed_metaworlds_draw_settings_draws_uncached(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gym.make_vec(..., num_goals=n)` sets Metaworld's goal count for the whole process: its draws are
    not the cached ones, so they are neither read nor written."""
    path = cache_path("reach-v3", 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(fake_benchmark(["reach-v3"])))
    for name, value in (("_N_GOALS", 3), ("_MT_OVERRIDE", {"partially_observable": True})):
        with monkeypatch.context() as patch:
            patch.setattr(metaworld, name, value)
            draw = CountingDraw(fake_benchmark(["mt2-a", "mt2-b"]))
            load_or_draw("reach-v3", 0, ["reach-v3"], draw)
            load_or_draw("mt2", 0, ["mt2-a", "mt2-b"], draw)
            assert draw.calls == 2 and not cache_path("mt2", 0).exists(), name
