"""Checkpoint files of a run: atomic writes that keep the previous good one, and loading with fallback.

What goes into a checkpoint is the components' business (`Trainer.state_dict` gathers them); this module only
knows how to put a state on disk so that a crash, a kill -9 or a full disk at any moment leaves
at least one complete, loadable checkpoint behind.

Layout (format 4): the replay buffer (gigabytes for a 1e6 buffer) is a file of its own,
`replay-<token>.pt`, named inside the checkpoint file that holds everything else (`checkpoint.pt`, and
`checkpoint.prev.pt` for the one before). Evaluation reads the checkpoint file alone
(`load_latest(..., replay=False)`, memory-mapped: only the tensors it touches are read), so a run can be
evaluated, or copied to a laptop, without its replay; resuming reads both.
"""

from __future__ import annotations

import contextlib
import secrets
import warnings
from pathlib import Path
from typing import Any

import torch

from mtrl_famo.atomic import atomic_output

LATEST = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
REPLAY_PREFIX = "replay-"  # replay-<token>.pt, one per checkpoint that holds a replay
REPLAY_KEY = "replay"  # the entry of a state that goes into the replay file
FORMAT_VERSION = 4  # 2: one file; 3: the replay in a file of its own; 4: the config copy nested like the YAML
# Formats this version refuses, with what changed since (nothing has been released: no migration is kept).
OLDER_FORMATS = {
    2: "format 2, its replay inside",
    3: "format 3, its config copy flat",
}


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used for this run."""


class OlderLayoutError(CheckpointError):
    """A checkpoint written in a layout this version no longer reads (nothing to fall back to)."""


def save(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` as the newest checkpoint; the one it replaces becomes the previous one.

    The replay (`state["replay"]`, if any) is written first, fsynced, under a new name; then the
    checkpoint naming it is fully written and fsynced under a temporary name, the old newest is
    renamed to PREVIOUS and the new one to LATEST: a crash between any two steps leaves a complete
    checkpoint, with its replay file, under one of the two names. Replay files that neither
    checkpoint names any more are removed last.
    """
    state = dict(state)
    replay = state.pop(REPLAY_KEY, None)
    if replay is not None:
        name = f"{REPLAY_PREFIX}{secrets.token_hex(8)}.pt"
        with atomic_output(run_dir / name) as handle:
            torch.save({"format_version": FORMAT_VERSION, "file": name, REPLAY_KEY: replay}, handle)
        state["replay_file"] = name
    latest = run_dir / LATEST
    with atomic_output(latest, keep_previous=run_dir / PREVIOUS) as handle:
        torch.save({"format_version": FORMAT_VERSION, **state}, handle)
    _remove_unnamed_replays(run_dir, keep=state.get("replay_file"))
    return latest


def _remove_unnamed_replays(run_dir: Path, keep: str | None) -> None:
    """Delete the replay files that neither LATEST (naming `keep`) nor PREVIOUS names (a previous
    checkpoint that cannot be read can never be resumed, so its replay goes too), and the temporary
    file of a replay whose writing was killed."""
    named = {keep}
    with contextlib.suppress(Exception):  # absent or unreadable
        named.add(_read(run_dir / PREVIOUS, "cpu", mmap=True).get("replay_file"))
    for path in [*run_dir.glob(f"{REPLAY_PREFIX}*.pt"), *run_dir.glob(f".{REPLAY_PREFIX}*.tmp")]:
        if path.name not in named:
            path.unlink(missing_ok=True)


def _read(path: Path, map_location: torch.device | str, *, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint file's state (without the replay); CheckpointError if it is not of this format."""
    state = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    if isinstance(state, dict) and state.get("format_version") in OLDER_FORMATS:
        raise OlderLayoutError(
            f"{path} is a checkpoint of an older layout ({OLDER_FORMATS[state['format_version']]}) that this "
            f"version does not read; delete {LATEST}, {PREVIOUS} and replay-*.pt in {path.parent} to start the "
            "run afresh."
        )
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a mtrl_famo checkpoint of format version {FORMAT_VERSION}.")
    return state


def _read_replay(run_dir: Path, state: dict[str, Any], map_location: torch.device | str) -> Any:
    """The replay that the checkpoint `state` names, checked to be that very file."""
    name = state["replay_file"]
    replay = torch.load(run_dir / name, map_location=map_location, weights_only=False)
    if not isinstance(replay, dict) or replay.get("file") != name or REPLAY_KEY not in replay:
        raise CheckpointError(f"{run_dir / name} is not the replay file its checkpoint names.")
    return replay[REPLAY_KEY]


def load_latest(
    run_dir: Path, map_location: torch.device | str = "cpu", *, replay: bool = True
) -> dict[str, Any] | None:
    """The newest loadable checkpoint in `run_dir`, or None when there is none.

    With `replay` (resuming), the state holds the replay again under "replay", read from its file, and
    a checkpoint whose replay file is missing or unreadable counts as unreadable. Without (evaluation),
    the replay file is never opened and the checkpoint file is memory-mapped, so only the tensors the
    caller touches are read from disk.

    A newest checkpoint that is truncated or corrupted (or vanished between the two renames of `save`)
    is reported with a warning and the previous one is used instead. A checkpoint of the older layout
    is refused in one sentence.
    """
    failures: list[str] = []
    for name in (LATEST, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = _read(path, map_location, mmap=not replay)
            if replay and "replay_file" in state:
                state[REPLAY_KEY] = _read_replay(run_dir, state, map_location)
        except OlderLayoutError:
            raise
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
