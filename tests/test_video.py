"""Evaluation videos (eval.video): Metaworld's own offscreen rendering of real tasks, read back with
TensorBoard's reader, PyAV and Pillow; the refusals are one sentence before any work."""

from __future__ import annotations

import ctypes.util
import io
import json
import os
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtrl_famo import evaluate
from mtrl_famo.config import ConfigError, compose
from mtrl_famo.run_files import EVALUATIONS_DIR, VIDEOS_DIR
from mtrl_famo.tags import EVAL_VIDEO
from mtrl_famo.video import HEADLESS_BACKENDS, VideoRecorder, check_backend

from observed_run import EPISODE_STEPS, FRAME_STRIDE, LAST_STEPS, TASKS, VIDEO_SIZE, VIDEO_STEPS, observed_run

FRAMES = EPISODE_STEPS // FRAME_STRIDE + 1  # the reset's frame and every stride-th step's


def decode_mp4(source: Path | bytes) -> np.ndarray:
    """All frames of an mp4, [T, H, W, 3], decoded by PyAV (FFmpeg)."""
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_recorder_renders_a_real_episode_of_each_chosen_task() -> None:
    """push-v3, the second of two tasks: the policy sees its observation in row 1 (row 0 stays 0),
    frames have the configured shape and show the arm moving, and every recording of a task starts
    from the same goal and state."""
    config = compose(
        "env=custom",
        "env.tasks=[reach-v3,push-v3]",
        "env.max_episode_steps=12",
        "eval.video=true",
        "video.tasks=[push-v3]",
        "video.frame_stride=4",
        "video.width=64",
        "video.height=48",
    )
    seen = []

    def policy(obs: np.ndarray) -> np.ndarray:
        seen.append(obs.copy())
        return np.tile(np.array([1.0, -1.0, 1.0, 1.0], dtype=np.float32), (len(obs), 1))

    recorder = VideoRecorder(config.env, config.seed, config.video)
    try:
        recorder.prepare()  # as the background worker does between evaluations
        frames = recorder.episodes(policy)
        again = recorder.episodes(policy)
        videos = recorder.record(policy)
    finally:
        recorder.close()
    assert set(frames) == set(videos) == {"push-v3"}
    push = frames["push-v3"]
    assert push.shape == (12 // 4 + 1, 48, 64, 3) and push.dtype == np.uint8
    assert push.std() > 10  # a picture, not a blank
    assert np.abs(push[-1].astype(np.int16) - push[0]).mean() > 1  # the arm moved
    np.testing.assert_array_equal(again["push-v3"], push)
    assert len(seen) == 3 * 12 and seen[0].shape == (2, 39 + 2)
    assert not seen[0][0].any() and seen[0][1, -2:].tolist() == [0, 1]  # push-v3's one-hot, in its row
    video = videos["push-v3"]
    decoded = decode_mp4(video.mp4)
    assert decoded.shape == push.shape and np.abs(decoded.astype(np.int16) - push).mean() < 12  # lossy H.264
    gif = Image.open(io.BytesIO(video.gif))
    assert (gif.format, gif.n_frames, gif.size) == ("GIF", len(push), (64, 48))


@pytest.mark.slow  # two CLI runs (tests/observed_run.py), shared with the other file's slow tests
def test_videos_of_a_resumed_run_are_in_tensorboard_and_files_once_each(tmp_path_factory) -> None:
    """Evaluations at 40, 80 (background worker, checkpoint) | 120, 160 (resumed, blocking) with
    video.every=2: videos at 80 and 160 only, each once in TensorBoard and once as a file."""
    observed = observed_run(tmp_path_factory)
    for part in observed.parts:  # the renderers were closed before the interpreter's teardown
        assert "Exception ignored" not in part.stderr and "EGLError" not in part.stderr, part.stderr[-3000:]
    accumulator = EventAccumulator(str(observed.run_dir), size_guidance={"images": 0})
    accumulator.Reload()
    assert sorted(accumulator.Tags()["images"]) == sorted(f"{EVAL_VIDEO}/{task}" for task in TASKS)
    for task in TASKS:
        events = accumulator.Images(f"{EVAL_VIDEO}/{task}")
        assert [event.step for event in events] == list(VIDEO_STEPS)
        for event in events:
            gif = Image.open(io.BytesIO(event.encoded_image_string))
            assert (gif.format, gif.n_frames, gif.size) == ("GIF", FRAMES, VIDEO_SIZE)
            assert (event.width, event.height) == VIDEO_SIZE
    files = sorted(path.name for path in (observed.run_dir / VIDEOS_DIR).iterdir())
    assert files == sorted(f"{task}_step{step}.mp4" for task in TASKS for step in VIDEO_STEPS)
    for name in files:
        frames = decode_mp4(observed.run_dir / VIDEOS_DIR / name)
        assert frames.shape == (FRAMES, VIDEO_SIZE[1], VIDEO_SIZE[0], 3) and frames.std() > 10


@pytest.mark.slow  # two CLI runs (tests/observed_run.py), shared with the other file's slow tests
def test_evaluate_cli_records_beside_its_json_and_leaves_the_run_alone(tmp_path_factory, capsys) -> None:
    observed = observed_run(tmp_path_factory)
    run_videos = sorted((observed.run_dir / VIDEOS_DIR).iterdir())
    argv = [str(observed.run_dir), "eval.video=true", "video.tasks=[reach-v3]", "env.vector_strategy=sync", "--json"]
    assert evaluate.cli(argv) == 0
    report = json.loads(capsys.readouterr().out)
    path = observed.run_dir / EVALUATIONS_DIR / VIDEOS_DIR / f"reach-v3_step{LAST_STEPS}.mp4"
    assert report["videos"] == {"reach-v3": str(path)}
    assert decode_mp4(path).shape == (FRAMES, VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
    assert sorted((observed.run_dir / VIDEOS_DIR).iterdir()) == run_videos


@pytest.mark.parametrize(
    "override, shown",
    [
        ("video.camera=side", "Unknown video.camera 'side'; choose one of corner, corner2"),
        ("video.width=161", "video.width=161 is invalid; it must be an even number of pixels from 16 to 4096"),
        ("video.tasks=[hammer-v3]", "video.tasks names 'hammer-v3', which is not a task of env=mt10"),
        ("video.tasks=reach-v3", "video.tasks='reach-v3' is invalid; it must be all or a list of strings"),
        ("eval.video=maybe", "eval.video='maybe' is invalid; it must be true or false"),
        ("wandb.entity=5", "wandb.entity=5 is invalid; it must be a string or null"),
    ],
)
def test_bad_video_and_wandb_settings_are_one_sentence(override: str, shown: str) -> None:
    with pytest.raises(ConfigError) as error:
        compose(override)
    assert shown in str(error.value) and "\n" not in str(error.value)


def test_the_backend_is_chosen_by_rendering_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    chosen = check_backend()
    assert chosen in HEADLESS_BACKENDS and os.environ["MUJOCO_GL"] == chosen  # inherited by the workers


@pytest.mark.skipif(ctypes.util.find_library("OSMesa") is not None, reason="OSMesa is installed here")
def test_a_backend_that_cannot_render_is_one_sentence_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    with pytest.raises(ConfigError) as error:
        compose("env=custom", "env.tasks=[reach-v3]", "eval.video=true")
    message = str(error.value)
    assert "MUJOCO_GL=osmesa does not work here" in message and "apt-get install libosmesa6" in message
    assert "\n" not in message


def test_video_without_its_extra_is_one_sentence_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(ConfigError) as error:
        compose("env=custom", "env.tasks=[reach-v3]", "eval.video=true")
    message = str(error.value)
    assert "PyAV is not installed" in message and "pip install -e '.[video]'" in message and "\n" not in message
