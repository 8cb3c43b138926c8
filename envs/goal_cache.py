"""Metaworld's goal draws, kept on disk: each (benchmark, seed) is drawn once per machine, not per process.

Why: a draw builds and resets every task's env 50 times, about 0.8 s of CPU per task (8 s for MT10,
35 s for MT50), and every process that builds an env pays it: each run, each background evaluation
worker, each job of a Slurm sweep. The draw depends on the benchmark, the seed and Metaworld's code
alone (Metaworld seeds NumPy's global generator for it and restores it after), so its result,
Metaworld's own benchmark object (class table and `Task` tuples), is pickled under the versions of
Metaworld and MuJoCo and read back by every later process.

Where: `$MTRL_FAMO_CACHE_DIR`, else `$XDG_CACHE_HOME/mtrl_famo`, else `~/.cache/mtrl_famo`;
`MTRL_FAMO_CACHE_DIR=off` draws in every process and writes nothing. A file that cannot be read, or
does not hold 50 goals of each task of its class table, is drawn again and replaced. Files are written
atomically (a reader never sees half of one; processes racing to write one write the same draw). The
files are pickles, read only from this directory: point it at a directory only you can write.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtrl_famo.atomic import atomic_output

CACHE_DIR_VARIABLE = "MTRL_FAMO_CACHE_DIR"
OFF = "off"
GOALS_PER_TASK = 50  # Metaworld's _N_GOALS: every benchmark draws this many goals per task


def cache_dir() -> Path | None:
    """The directory of this machine's cached draws, or None when `MTRL_FAMO_CACHE_DIR=off`."""
    chosen = os.environ.get(CACHE_DIR_VARIABLE, "").strip()
    if chosen.lower() == OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not base:
        try:
            base = Path.home() / ".cache"
        except RuntimeError:  # no home directory to be found: no cache, a draw in every process
            return None
    return Path(base) / "mtrl_famo"


def _versions() -> str | None:
    """The code a draw depends on (a file drawn by other versions is never read); None when an
    installation does not say its version (nothing is cached then)."""
    try:
        return f"metaworld-{importlib.metadata.version('metaworld')}_mujoco-{importlib.metadata.version('mujoco')}"
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_path(name: str, seed: int) -> Path | None:
    """Where the draw of benchmark `name` (mt10/mt25/mt50 or one task's name) under `seed` is kept, or
    None when nothing is cached (`MTRL_FAMO_CACHE_DIR=off`, or versions unknown)."""
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


def load_or_draw(name: str, seed: int, tasks: Sequence[str], draw: Callable[[], Any]) -> Any:
    """The cached draw of (`name`, `seed`), whose class table is `tasks`, if a complete one is on disk,
    else `draw()`, written there when complete (an incomplete draw, such as a test's goal-less stub,
    is returned but never kept)."""
    path = cache_path(name, seed)
    if path is not None:
        try:
            with path.open("rb") as handle:
                cached = pickle.load(handle)
        except Exception:  # absent, unreadable, truncated, or pickled by code that no longer exists: draw
            cached = None
        if cached is not None and is_complete(cached, tasks):
            return cached
    benchmark = draw()
    if path is not None and is_complete(benchmark, tasks):
        try:
            with atomic_output(path) as handle:
                pickle.dump(benchmark, handle, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError:  # a read-only or full disk costs the next process a draw, nothing more
            pass
    return benchmark
