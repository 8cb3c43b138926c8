"""Checkpoint files of a run: atomic writes that keep the previous good one, and loading with fallback.

What goes into a checkpoint is the components' business (`Trainer.state_dict` gathers them); this module only
knows how to put a state on disk so that a crash, a kill -9 or a full disk at any moment leaves
at least one complete, loadable checkpoint behind.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from mtrl_famo.atomic import atomic_output

LATEST = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT_VERSION = 2  # 2: the state is the components' own state_dicts


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used for this run."""


def save(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` as the newest checkpoint; the one it replaces becomes the previous one.

    The new file is fully written and fsynced under a temporary name, then the old newest is
    renamed to PREVIOUS, then the new one to LATEST: a crash between any two steps leaves a
    complete checkpoint under one of the two names.
    """
    latest = run_dir / LATEST
    with atomic_output(latest, keep_previous=run_dir / PREVIOUS) as handle:
        torch.save({"format_version": FORMAT_VERSION, **state}, handle)
    return latest


def _read(path: Path, map_location: torch.device | str) -> dict[str, Any]:
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a mtrl_famo checkpoint of format version {FORMAT_VERSION}.")
    return state


def load_latest(run_dir: Path, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The newest loadable checkpoint in `run_dir`, or None when there is none.

    A newest file that is truncated or corrupted (or vanished between the two renames of `save`)
    is reported with a warning and the previous one is used instead.
    """
    failures: list[str] = []
    for name in (LATEST, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = _read(path, map_location)
        except Exception as error:
            failures.append(
                f"{path}: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            )
            continue
        if failures:
            warnings.warn(
                f"Checkpoint {failures[0]} could not be read; resuming from the previous checkpoint {path}.",
                RuntimeWarning,
                stacklevel=2,
            )
        return state
    if failures:
        raise CheckpointError(
            f"No checkpoint in {run_dir} can be read ({'; '.join(failures)}); delete them to start afresh."
        )
    return None
