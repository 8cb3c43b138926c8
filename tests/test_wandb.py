"""Weights & Biases beside TensorBoard, in offline mode (no network): the offline run's own .wandb files,
decoded with wandb's protobuf classes, hold every TensorBoard scalar at its step, the config, the
summary and the videos; a resumed run continues the same W&B run."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from mtrl_famo.config import ConfigError, compose
from mtrl_famo.run_files import WANDB_RUN_ID_FILE
from mtrl_famo.wandb_logger import STEP_METRIC, run_id

from conftest import tb_scalars
from observed_run import FIRST_STEPS, TASKS, VIDEO_STEPS, observed_run

# A .wandb file: a 7-byte header (":W&B", magic, version), then LevelDB's log format: 32 KiB blocks of
# records, each a 7-byte header (crc32c, length, type) and a piece of one serialized wandb Record.
BLOCK, RECORD_HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
WANDB_KEYS = {STEP_METRIC, "_step", "_runtime", "_timestamp"}  # W&B's own history keys, and our x-axis


def wandb_records(path: Path) -> Iterator[object]:
    """Every Record of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, pieces = RECORD_HEADER, b""
    while position + RECORD_HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < RECORD_HEADER:  # a block's tail too short for a header is padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + RECORD_HEADER])
        piece = data[position + RECORD_HEADER : position + RECORD_HEADER + length]
        position += RECORD_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces + piece)
            pieces = b""
            yield record
        elif kind in (FIRST, MIDDLE):
            pieces += piece


def values_of(items: Iterable[object]) -> dict:
    """A history row's or summary's items as a dict; media are nested under their tag (path, _type, ...)."""
    values: dict = {}
    for item in items:
        *parents, leaf = [item.key] if item.key else list(item.nested_key)
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = json.loads(item.value_json)
    return values


def offline_runs(wandb_dir: Path) -> list[Path]:
    """The offline run directories under WANDB_DIR, oldest first (one per launch of the run)."""
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


def read_run(directory: Path) -> dict:
    """What one offline run holds: its run record, config, history rows and summary."""
    (log,) = directory.glob("run-*.wandb")
    run, config, history, summary = None, {}, [], {}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append(values_of(record.history.item))
        elif kind == "summary":
            summary.update(values_of(record.summary.update))
    return {"run": run, "config": config, "history": history, "summary": summary}


@pytest.mark.slow  # two CLI runs (tests/observed_run.py), shared with the other file's slow tests
def test_offline_run_holds_every_tensorboard_scalar_the_config_the_summary_and_the_videos(tmp_path_factory) -> None:
    observed = observed_run(tmp_path_factory)
    first, second = (read_run(directory) for directory in offline_runs(observed.wandb_dir))
    logged = {}
    for row in first["history"] + second["history"]:
        for tag, value in row.items():
            if tag not in WANDB_KEYS and not tag.startswith("eval/video/"):
                assert (tag, row[STEP_METRIC]) not in logged, f"{tag} logged twice at step {row[STEP_METRIC]}"
                logged[tag, row[STEP_METRIC]] = value
    tensorboard = {(tag, step): value for tag, points in tb_scalars(observed.run_dir).items() for step, value in points}
    assert {"eval/success_rate", "loss/critic", "perf/env_steps_per_s"} <= {tag for tag, _ in tensorboard}
    assert set(logged) == set(tensorboard)
    for key, value in tensorboard.items():  # TensorBoard keeps float32
        assert logged[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key

    assert first["config"]["eval"]["video"] is True and first["config"]["video"]["width"] == 64
    assert first["config"]["env"]["tasks"] == list(TASKS) and second["config"]["steps"] == 160
    run = first["run"]
    assert (run.project, run.run_group, list(run.tags)) == ("observed", "none/custom/mtsac", ["tiny", "test"])
    summary = json.loads((observed.run_dir / "summary.json").read_text())
    assert {key: second["summary"][key] for key in summary} == summary

    videos = [
        (row[STEP_METRIC], tag, value)
        for part in (first, second)
        for row in part["history"]
        for tag, value in row.items()
        if tag.startswith("eval/video/")
    ]
    assert sorted((step, tag) for step, tag, _ in videos) == sorted(
        (step, f"eval/video/{task}") for step in VIDEO_STEPS for task in TASKS
    )
    for step, _, value in videos:
        directory = offline_runs(observed.wandb_dir)[0 if step <= FIRST_STEPS else 1]
        assert value["_type"] == "video-file" and (directory / "files" / value["path"]).stat().st_size > 0


@pytest.mark.slow  # two CLI runs (tests/observed_run.py), shared with the other file's slow tests
def test_a_resumed_run_continues_the_same_wandb_run(tmp_path_factory) -> None:
    observed = observed_run(tmp_path_factory)
    kept = (observed.run_dir / WANDB_RUN_ID_FILE).read_text().strip()
    directories = offline_runs(observed.wandb_dir)
    assert len(directories) == 2 and all(directory.name.endswith(f"-{kept}") for directory in directories)
    first, second = (read_run(directory) for directory in directories)
    assert first["run"].run_id == second["run"].run_id == kept
    assert min(row[STEP_METRIC] for row in second["history"]) > FIRST_STEPS  # nothing of the first part again


def test_the_run_id_is_kept_for_a_resumed_run_only(tmp_path: Path) -> None:
    """A run that starts from step 0 (an earlier attempt left no checkpoint) starts a new W&B run, as
    TensorBoard purges that attempt's events; a resumed one reuses the kept id."""
    first = run_id(tmp_path, resumed=False)
    assert (tmp_path / WANDB_RUN_ID_FILE).read_text().strip() == first
    assert run_id(tmp_path, resumed=True) == first
    fresh = run_id(tmp_path, resumed=False)
    assert fresh != first and run_id(tmp_path, resumed=True) == fresh


def test_wandb_without_its_extra_is_one_sentence_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec finds nothing
    with pytest.raises(ConfigError) as error:
        compose("env=custom", "env.tasks=[reach-v3]", "wandb.enabled=true")
    message = str(error.value)
    assert "pip install -e '.[wandb]'" in message and "wandb.enabled=false" in message and "\n" not in message
