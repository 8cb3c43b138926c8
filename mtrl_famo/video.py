"""Evaluation videos: one deterministic episode per chosen task, rendered offscreen by Metaworld.

Why a recorder of its own instead of rendering the evaluation's episodes: the evaluation env may
live in worker processes, and its episodes draw goals from an RNG that is part of a checkpoint.
The recorder builds, in the process that evaluates (the trainer, the background evaluation worker
or `python -m mtrl_famo.evaluate`), one single-task env per chosen task with Metaworld's own
`render_mode="rgb_array"`, from the same factory and seed as the evaluation's sub-env of that task.
Before every video it restores that env to its state right after construction and resets it with
the seed the vector env gives that row, so every video of a task shows the same goal and start
(with `env.goals=fixed`, the training goal): the videos of a run differ only by the policy.

Software rendering (Mesa's llvmpipe) is slow, and a frame's cost is the shadow map (MuJoCo draws a
4096 x 4096 one for each shadow-casting light), multisampling, the table's reflection (the scene
drawn twice) and Metaworld's 67k mesh triangles, hardly the frame's size: a 160 x 120 frame costs
about 0.16 s with all of them and 0.02 s without the first three. So multisampling is off, and
shadows and reflections are config keys (`video.shadows`, `video.reflections`, off by default).
Frames are encoded where they were rendered (H.264 mp4 for the run directory and W&B, an animated
GIF for TensorBoard's image tab), so only a few hundred KB per video cross processes.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtrl_famo.atomic import atomic_output
from mtrl_famo.config import ConfigError, EnvSpec, VideoConfig
from mtrl_famo.envs.builder import sub_env_factories

Policy = Callable[[np.ndarray], np.ndarray]  # obs [K, obs_dim] -> actions [K, action_dim], row i = task i

# MuJoCo's headless backends, tried in this order when MUJOCO_GL is unset: EGL (Mesa's or a GPU
# driver's), then OSMesa (pure software).
HEADLESS_BACKENDS = ("egl", "osmesa")
INSTALL_HINT = (
    "install Mesa's EGL (Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri) or OSMesa (apt-get install libosmesa6)"
)
PROBE_TIMEOUT_S = 120.0
# Renders one small frame through whatever MUJOCO_GL names, and frees the context before exit.
_PROBE = """
import mujoco
model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><light/><geom size="1"/></worldbody></mujoco>')
renderer = mujoco.Renderer(model, 16, 16)
renderer.update_scene(mujoco.MjData(model))
renderer.render()
renderer.close()
"""
_WORKING_BACKENDS: set[str] = set()  # probed in this process already

GIF_PALETTE_FRAMES = 6  # frames the GIF's one palette is drawn from
VIDEO_PACKAGES = {"PyAV": "av", "Pillow": "PIL"}  # the `video` extra: what encodes the mp4 and the GIF


@dataclass(frozen=True)
class Video:
    """One rendered episode, encoded: `mp4` (H.264) for the run directory and W&B, `gif` for TensorBoard."""

    mp4: bytes
    gif: bytes
    width: int
    height: int
    num_frames: int
    fps: int


# ----- the rendering backend ----------------------------------------------------------------------
def probe_backend(name: str) -> str | None:
    """None if MuJoCo renders a frame with MUJOCO_GL=`name` here, else why not (its last error line).

    In a subprocess: PyOpenGL fixes its platform at first import, so a failed try could not be
    undone in this process, and a broken driver may crash rather than raise.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE],
            env={**os.environ, "MUJOCO_GL": name},
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"no frame within {PROBE_TIMEOUT_S:.0f} s"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def check_backend() -> str:
    """The offscreen backend MuJoCo renders videos with, checked by rendering a frame: the one
    MUJOCO_GL names, else the first of HEADLESS_BACKENDS that works, which is then put into
    os.environ so that this process and every worker it starts render with it.

    Raises ConfigError naming what to install when rendering cannot work, before any training.
    """
    requested = os.environ.get("MUJOCO_GL", "").strip()
    if requested:
        if requested not in _WORKING_BACKENDS:
            problem = probe_backend(requested)
            if problem is not None:
                raise ConfigError(
                    f"eval.video=true needs MuJoCo to render offscreen, but MUJOCO_GL={requested} does not work "
                    f"here ({problem}); {INSTALL_HINT}, or unset MUJOCO_GL to let the run try "
                    f"{' then '.join(HEADLESS_BACKENDS)}."
                )
            _WORKING_BACKENDS.add(requested)
        return requested
    problems = []
    for name in HEADLESS_BACKENDS:
        problem = probe_backend(name)
        if problem is None:
            os.environ["MUJOCO_GL"] = name
            _WORKING_BACKENDS.add(name)
            return name
        problems.append(f"{name}: {problem}")
    raise ConfigError(
        f"eval.video=true needs an offscreen OpenGL backend for MuJoCo and none works here ({'; '.join(problems)}); "
        f"{INSTALL_HINT}, or set eval.video=false."
    )


def check_video() -> None:
    """For `eval.video=true`, before any work: refuse a missing `video` extra or rendering backend in one
    sentence, so that a run never finds out at its first evaluation (the `video.*` values themselves are
    checked with the config: mtrl_famo.config.check_video_settings)."""
    missing = [package for package, module in VIDEO_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"eval.video=true needs {' and '.join(VIDEO_PACKAGES)} of the 'video' extra, and {', '.join(missing)} "
            "is not installed; install it with pip install -e '.[video]' (from the repository root), or set "
            "eval.video=false."
        )
    check_backend()


# ----- rendering ------------------------------------------------------------------------------------
@dataclass
class _TaskEnv:
    """A rendering single-task env, its row in the vector env and its state right after construction."""

    task: str
    row: int
    env: Any  # gymnasium.Env
    initial_state: tuple[str, dict[str, Any]]  # Metaworld's CheckpointWrapper: (env id, state)
    camera_id: int


class VideoRecorder:
    """Renders one deterministic episode per chosen task (`VideoConfig`); its envs are built on first use."""

    def __init__(self, spec: EnvSpec, seed: int, settings: VideoConfig):
        self.spec, self.seed, self.settings = spec, seed, settings
        self.task_names = spec.task_names()
        self.tasks = list(self.task_names) if settings.tasks == "all" else list(settings.tasks)
        self._factories: list[Callable[[], Any]] | None = None
        self._envs: list[_TaskEnv] = []

    def _build_next(self) -> _TaskEnv:
        """Build the next chosen task's env (the sub-env factories first, once)."""
        import mujoco

        settings = self.settings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self._factories is None:
                common = dict(
                    use_one_hot=self.spec.one_hot,
                    max_episode_steps=self.spec.max_episode_steps,
                    reward_function_version=self.spec.reward_version,
                    task_select="random",
                    render_mode="rgb_array",
                    camera_name=settings.camera,
                    width=settings.width,
                    height=settings.height,
                )
                self._factories = sub_env_factories(self.spec, self.seed, common)
            task = self.tasks[len(self._envs)]
            row = self.task_names.index(task)
            env = self._factories[row]()
        model = env.unwrapped.model  # visual settings only; read when the GL context is made
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth, model.vis.global_.offheight = settings.width, settings.height
        if not settings.shadows:  # no shadow map at all: 64 MB per context at 4096 x 4096
            model.light_castshadow[:] = 0
            model.vis.quality.shadowsize = 0
        if not settings.reflections:  # a reflective material draws the scene a second time
            model.mat_reflectance[:] = 0
        camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, settings.camera)
        self._envs.append(_TaskEnv(task, row, env, env.get_checkpoint(), camera_id))
        return self._envs[-1]

    def _built(self) -> list[_TaskEnv]:
        while len(self._envs) < len(self.tasks):
            self._build_next()
        return self._envs

    def prepare(self, interrupted: Callable[[], bool] = lambda: False) -> None:
        """Build the envs and their GL contexts now rather than at the first recording (the background
        evaluation worker does it while it waits for work), so that every recording costs the same;
        stops between tasks once `interrupted()` (work has come), and the first recording builds the rest."""
        while len(self._envs) < len(self.tasks) and not interrupted():
            self._build_next().env.render()  # the first frame makes its GL context

    def episodes(self, policy: Policy) -> dict[str, np.ndarray]:
        """Frames [T, height, width, 3] (uint8) of one full episode per chosen task, run side by
        side: the reset's frame, then every `video.frame_stride`-th step's."""
        envs = self._built()
        stride = self.settings.frame_stride
        obs_dim = envs[0].env.observation_space.shape[0]
        obs = np.zeros((len(self.task_names), obs_dim), dtype=np.float32)  # rows of unrecorded tasks stay 0
        upside_down = {}
        for task_env in envs:
            task_env.env.load_checkpoint([task_env.initial_state])
            obs[task_env.row], _ = task_env.env.reset(seed=self.seed + task_env.row)  # the vector env's seed of the row
            upside_down[task_env.task] = _camera_upside_down(task_env)
        frames: dict[str, list[np.ndarray]] = {task_env.task: [] for task_env in envs}

        def render() -> None:
            for task_env in envs:
                frame = task_env.env.render()
                frames[task_env.task].append(frame[::-1, ::-1] if upside_down[task_env.task] else frame)

        render()
        for step in range(1, self.spec.max_episode_steps + 1):
            actions = policy(obs)
            for task_env in envs:
                obs[task_env.row], *_ = task_env.env.step(actions[task_env.row])
            if step % stride == 0:
                render()
        return {task: np.stack(task_frames) for task, task_frames in frames.items()}

    def record(self, policy: Policy) -> dict[str, Video]:
        """`episodes`, encoded; task -> Video."""
        fps = self.settings.fps
        return {
            task: Video(
                mp4=encode_mp4(frames, fps),
                gif=encode_gif(frames, fps),
                width=frames.shape[2],
                height=frames.shape[1],
                num_frames=frames.shape[0],
                fps=fps,
            )
            for task, frames in self.episodes(policy).items()
        }

    def close(self) -> None:
        """Free the GL contexts now; left to the interpreter's teardown, EGL is unloaded before them and
        each prints an error at exit. Safe to call again."""
        for task_env in self._envs:
            task_env.env.close()
        self._envs, self._factories = [], None


def _camera_upside_down(task_env: _TaskEnv) -> bool:
    """Whether the camera's up axis points below the horizon, as Metaworld's corner cameras are
    defined (for mujoco-py, which read images bottom row first): such frames are turned 180 degrees."""
    orientation = task_env.env.unwrapped.data.cam_xmat[task_env.camera_id].reshape(3, 3)
    return bool(orientation[2, 1] < 0)  # z component of the camera's y (up) axis


# ----- encoding and files --------------------------------------------------------------------------
def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """H.264 in yuv420p (what browsers, W&B and TensorBoard users' players all play), in an mp4."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "fast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def encode_gif(frames: np.ndarray, fps: int) -> bytes:
    """An endlessly looping animated GIF: what TensorBoard's image tab plays (and what torch's
    add_video writes, through moviepy 1.x, whose `moviepy.editor` moviepy 2 removed).

    One 256-colour palette for the whole video, from a few of its frames (fast octree, no
    dithering): a tenth of the time of Pillow's per-frame median cut and smaller files, no flicker.
    """
    from PIL import Image

    sample = np.concatenate(frames[:: max(1, len(frames) // GIF_PALETTE_FRAMES)], axis=0)
    palette = Image.fromarray(sample).quantize(256, method=Image.Quantize.FASTOCTREE)
    images = [
        Image.fromarray(np.ascontiguousarray(frame)).quantize(palette=palette, dither=Image.Dither.NONE)
        for frame in frames
    ]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def video_path(directory: Path, task: str, step: int) -> Path:
    """`<directory>/<task>_step<N>.mp4`: one file per task and evaluation step, so a resumed run that
    records a step again replaces its file instead of adding one."""
    return directory / f"{task}_step{step}.mp4"


def write_video(path: Path, video: Video) -> None:
    """Write the mp4 atomically (a reader never sees half a file)."""
    with atomic_output(path) as handle:
        handle.write(video.mp4)
