"""Metaworld multitask environments: building and stepping them, scoring episodes, evaluating."""

from mtrl_famo.envs.builder import EnvSpec, MultiTaskEnv, build_env, known_task_names
from mtrl_famo.envs.episodes import EpisodeTracker, FinishedEpisodes
from mtrl_famo.envs.evaluation import EvalResult, evaluate
from mtrl_famo.envs.reward_scale import RunningRewardScale
from mtrl_famo.envs.step import VectorStep, normalise_step

__all__ = [
    "EnvSpec",
    "EpisodeTracker",
    "EvalResult",
    "FinishedEpisodes",
    "MultiTaskEnv",
    "RunningRewardScale",
    "VectorStep",
    "build_env",
    "evaluate",
    "known_task_names",
    "normalise_step",
]
