"""Periodic deterministic evaluation on an env of its own, whose goal RNG is part of a checkpoint.

`Evaluator` evaluates in the calling process (training waits); `mtrl_famo.background_eval` runs the
same `Evaluator` in a worker process. Both offer `submit(step)`, `wait()`, `collect()` and `last`,
which is all the trainer uses, so it does not care which one it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import torch

from mtrl_famo.agents.networks import Actor
from mtrl_famo.config import VideoConfig
from mtrl_famo.envs import EnvSpec, EvalResult, MultiTaskEnv, build_env
from mtrl_famo.envs.evaluation import PROTOCOLS
from mtrl_famo.video import Video, VideoRecorder


class HasActor(Protocol):
    """What the evaluator needs of an agent (a MultiTaskSAC, or a worker's bare actor)."""

    actor: Actor


class Evaluator:
    """Runs `episodes` mean-action episodes per task under `protocol` (a key of
    `mtrl_famo.envs.evaluation.PROTOCOLS`); the env is built on first use, as the protocol needs it.
    With `video` settings it can also record the policy (`record`), on envs of the recorder's own."""

    def __init__(
        self,
        spec: EnvSpec,
        seed: int,
        episodes: int,
        agent: HasActor,
        device: torch.device,
        *,
        protocol: str,
        video: VideoConfig | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown eval.protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}.")
        self.spec = spec
        self.seed = seed
        self.episodes = episodes
        self.agent = agent
        self.device = device
        self.protocol = PROTOCOLS[protocol]
        self.env: MultiTaskEnv | None = None
        self.last: EvalResult | None = None
        self._finished: list[tuple[int, EvalResult]] = []
        self.recorder = None if video is None else VideoRecorder(spec, seed, video)
        self._videos: list[tuple[int, dict[str, Video]]] = []

    def _env(self) -> MultiTaskEnv:
        if self.env is None:
            self.env = build_env(self.spec, self.seed, every_goal_in_turn=self.protocol.every_goal_in_turn)
        return self.env

    def policy(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)
            return self.agent.actor.mean_action(obs_t).squeeze(1).cpu().numpy()

    def run(self) -> EvalResult:
        self.last = self.protocol.evaluate(self.policy, self._env(), self.episodes)
        return self.last

    def record(self) -> dict[str, Video]:
        """One rendered episode of the current policy per chosen task (task -> encoded video)."""
        if self.recorder is None:
            raise RuntimeError("This evaluator has no video settings; build it with video=<VideoConfig> to record.")
        return self.recorder.record(self.policy)

    def submit(self, step: int, video: bool = False) -> None:
        """Evaluate the current policy now, for `step`, and with `video` record it; `collect` and
        `collect_videos` hand the results over."""
        self._finished.append((step, self.run()))
        if video:
            self._videos.append((step, self.record()))

    def wait(self) -> None:
        """Nothing to wait for: `submit` has finished each evaluation before it returned."""

    def collect(self, wait: bool = False) -> list[tuple[int, EvalResult]]:
        """The (step, result) of each evaluation finished since the last call, oldest first."""
        finished, self._finished = self._finished, []
        return finished

    def collect_videos(self) -> list[tuple[int, dict[str, Video]]]:
        """The (step, videos) of each recording finished since the last call, oldest first."""
        videos, self._videos = self._videos, []
        return videos

    def state_dict(self) -> dict[str, Any]:
        """The eval env's RNG (for metaworld also its goal shuffles and their position) and the last result."""
        return {
            "env_rng": None if self.env is None else self.env.rng_state(),
            "last": None if self.last is None else dataclasses.asdict(self.last),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["env_rng"] is not None:
            self._env().restore_rng_state(state["env_rng"])
        self.last = None if state["last"] is None else EvalResult(**state["last"])

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        if self.recorder is not None:
            self.recorder.close()  # before the interpreter's teardown, which would fail to free its GL contexts
