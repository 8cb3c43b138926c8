"""Metaworld's goal draws, kept on disk: each (benchmark, seed) is drawn once per machine, not per process.

Why: a draw builds and resets every task's env 50 times, about 0.7 s of CPU per task (7 s for MT10,
30 s for MT50), and every process that builds an env pays it: each run, each background evaluation
worker, each job of a Slurm sweep. The draw depends on the benchmark, the seed, Metaworld's code and
two of its module settings alone (Metaworld seeds NumPy's global generator for it and restores it
after), so its result, Metaworld's own benchmark object (class table and `Task` tuples), is pickled
under the versions of Python, Metaworld, MuJoCo and NumPy and read back by every later process. Not
cached: a Metaworld installed from a local tree or a checkout (its version number does not pin its
goals), and a process whose Metaworld settings were changed (`_drawn_as_keyed`).

Where: `$MTRL_FAMO_CACHE_DIR`, else `$XDG_CACHE_HOME/mtrl_famo`, else `~/.cache/mtrl_famo`;
`MTRL_FAMO_CACHE_DIR=off` draws in every process and writes nothing. A file that cannot be read, does
not hold 50 goals of each task of its class table, or whose goals do not unpickle here, is drawn again
and replaced; files of other versions sit in their own folders and are never read. Files are written
atomically (a reader never sees half of one; processes racing to write one write the same draw). The
files are pickles, read only from this directory: point it at a directory only you can write.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtrl_famo.atomic import atomic_output

CACHE_DIR_VARIABLE = "MTRL_FAMO_CACHE_DIR"
OFF = "off"
GOALS_PER_TASK = 50  # Metaworld's _N_GOALS: every benchmark draws this many goals per task
MT_OVERRIDE = {"partially_observable": False}  # Metaworld's _MT_OVERRIDE, part of every task's data
# The installed code a draw, and reading its pickles back, depends on.
KEY_DISTRIBUTIONS = ("metaworld", "mujoco", "numpy")


def cache_dir() -> Path | None:
    """The directory of this machine's cached draws (absolute), or None when `MTRL_FAMO_CACHE_DIR=off` or
    no home directory can be found."""
    chosen = os.environ.get(CACHE_DIR_VARIABLE, "").strip()
    if chosen.lower() == OFF:
        return None
    try:
        if chosen:
            return Path(chosen).expanduser().absolute()
        base = os.environ.get("XDG_CACHE_HOME", "").strip()
        if Path(base).is_absolute():  # the XDG spec: a relative value is ignored
            return Path(base) / "mtrl_famo"
        return Path.home() / ".cache" / "mtrl_famo"
    except RuntimeError:  # `~` with no home directory to be found: no cache, a draw in every process
        return None


def _versions() -> str | None:
    """The versions a draw is kept under (a file of other versions is never read), or None, and nothing
    is cached, when one is unknown or when Metaworld was installed from a local tree or a checkout: its
    version number then does not say which goals it draws."""
    parts = [f"py{sys.version_info[0]}.{sys.version_info[1]}"]
    for name in KEY_DISTRIBUTIONS:
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return None
        if name == "metaworld" and distribution.read_text("direct_url.json") is not None:
            return None
        parts.append(f"{name}-{distribution.version}")
    return "_".join(parts)


def _drawn_as_keyed() -> bool:
    """Whether Metaworld draws with the module settings every cached file was drawn with: a process that
    changed them (`gym.make_vec(..., num_goals=n)` sets `_N_GOALS` for the whole process) draws uncached."""
    import metaworld

    return (
        getattr(metaworld, "_N_GOALS", None) == GOALS_PER_TASK
        and getattr(metaworld, "_MT_OVERRIDE", None) == MT_OVERRIDE
    )


def cache_path(name: str, seed: int) -> Path | None:
    """Where the draw of benchmark `name` (mt10/mt25/mt50 or one task's name) under `seed` is kept, or
    None when nothing is cached (`MTRL_FAMO_CACHE_DIR=off`, a version unknown: `_versions`)."""
    root, versions = cache_dir(), _versions()
    if root is None or versions is None:
        return None
    return root / "metaworld-goals" / versions / f"{name}_seed{seed}.pkl"


def is_complete(benchmark: Any, tasks: Sequence[str]) -> bool:
    """Whether `benchmark`'s class table is `tasks`, in order, with exactly GOALS_PER_TASK goals of each."""
    try:
        if list(benchmark.train_classes) != list(tasks):
            return False
        counts = dict.fromkeys(tasks, 0)
        for task in benchmark.train_tasks:
            counts[task.env_name] += 1
    except (AttributeError, KeyError, TypeError):
        return False
    return all(count == GOALS_PER_TASK for count in counts.values())


def is_readable(benchmark: Any) -> bool:
    """Whether every task's data unpickles here, as Metaworld will at each reset (a file pickled under other
    module layouts fails now, not in the middle of a run)."""
    try:
        for task in benchmark.train_tasks:
            pickle.loads(task.data)
    except Exception:
        return False
    return True


def load_or_draw(name: str, seed: int, tasks: Sequence[str], draw: Callable[[], Any]) -> Any:
    """The cached draw of (`name`, `seed`), whose class table is `tasks`, if a complete one is on disk,
    else `draw()`, written there when complete (an incomplete draw, such as a test's goal-less stub,
    is returned but never kept)."""
    path = cache_path(name, seed) if _drawn_as_keyed() else None
    if path is not None:
        try:
            with path.open("rb") as handle:
                cached = pickle.load(handle)
        except Exception:  # absent, unreadable, truncated, or pickled by code that no longer exists: draw
            cached = None
        if cached is not None and is_complete(cached, tasks) and is_readable(cached):
            return cached
    benchmark = draw()
    if path is not None and is_complete(benchmark, tasks):
        try:
            with atomic_output(path) as handle:
                pickle.dump(benchmark, handle, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError:  # a read-only or full disk costs the next process a draw, nothing more
            pass
    return benchmark
