"""Typed view of the Hydra config and its validation (one clear sentence per mistake).

The config files under configs/ are the one home of every run default: the dataclasses here
have no defaults, and `from_dict` requires every key (a missing or unknown key is one sentence).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from mtrl_famo import balancers
from mtrl_famo.agents.networks import INITS
from mtrl_famo.agents.sac import ALPHAS, HEADS, LOSSES_THAT_CAN_BE_NEGATIVE
from mtrl_famo.configs import CONFIG_DIR  # re-exported: the one home of the config location
from mtrl_famo.envs.builder import EnvSpec
from mtrl_famo.envs.evaluation import EVAL_PROTOCOLS
from mtrl_famo.learner import BALANCED_LOSSES
from mtrl_famo.typecheck import describe, matches


class ConfigError(ValueError):
    """Bad user input, reported as one sentence before any work starts."""


class MissingKeyError(ConfigError):
    """A required config key is absent (`key`, dotted), e.g. from a config.yaml of an older version."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


# What a config is checked for: a training run, or `python -m mtrl_famo.evaluate` (its memory check counts
# the actor alone, not the replay and the update: mtrl_famo.memory.check_memory).
Purpose = Literal["train", "evaluate"]


@dataclass(frozen=True)
class AgentConfig:
    """configs/agent/sac.yaml, key for key (documented and defaulted there)."""

    heads: str
    alpha: str
    init: str
    hidden_dim: int
    num_layers: int
    batch_size_per_task: int
    warmup_steps: int
    replay_size: int
    updates_per_step: int
    lr: float
    discount: float
    tau: float
    actor_update_every: int
    target_update_every: int
    init_temperature: float
    log_std_min: float
    log_std_max: float
    compile: bool | Literal["auto"]  # mtrl_famo.compiled_update resolves auto
    cuda_graph: bool | Literal["auto"]


@dataclass(frozen=True)
class BalancerConfig:
    """configs/balancer/<name>.yaml: the method, the losses it balances and its options."""

    name: str
    apply_to: tuple[str, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class VideoConfig:
    """configs/video/default.yaml, key for key: what `eval.video=true` records (docs/observability.md)."""

    every: int  # at every Nth evaluation (and at the final one)
    tasks: Literal["all"] | tuple[str, ...]
    camera: str
    width: int
    height: int
    frame_stride: int
    fps: int
    shadows: bool
    reflections: bool


@dataclass(frozen=True)
class WandbConfig:
    """configs/wandb/default.yaml, key for key: the optional Weights & Biases logger (docs/observability.md)."""

    enabled: bool
    project: str
    entity: str | None
    group: str | None
    name: str | None
    tags: tuple[str, ...]


@dataclass(frozen=True)
class TrainConfig:
    """configs/config.yaml with its env, agent and balancer groups (see FIELD_KEYS for the nested keys)."""

    env: EnvSpec
    agent: AgentConfig
    balancer: BalancerConfig
    experiment: str
    seed: int
    device: str
    steps: int
    run_dir: str
    progress: bool
    eval_every: int
    eval_episodes: int
    eval_protocol: str
    eval_background: bool
    log_every: int
    conflicts_every: int
    checkpoint_every: int
    overlap: bool
    eval_video: bool
    video: VideoConfig
    wandb: WandbConfig


# Where each plain TrainConfig field sits in the config tree.
FIELD_KEYS: dict[str, tuple[str, ...]] = {
    "experiment": ("experiment",),
    "seed": ("seed",),
    "device": ("device",),
    "steps": ("steps",),
    "run_dir": ("run_dir",),
    "progress": ("progress",),
    "eval_every": ("eval", "every"),
    "eval_episodes": ("eval", "episodes"),
    "eval_protocol": ("eval", "protocol"),
    "eval_background": ("eval", "background"),
    "eval_video": ("eval", "video"),
    "log_every": ("log", "every"),
    "conflicts_every": ("log", "conflicts_every"),
    "checkpoint_every": ("checkpoint", "every"),
    "overlap": ("loop", "overlap"),
}
FIELD_OF = {keys: field for field, keys in FIELD_KEYS.items() if len(keys) == 2}  # (section, key) -> field
SECTIONS = ("env", "agent", "balancer", "video", "wandb", "eval", "log", "checkpoint", "loop")
ENV_EXTRA_KEYS = ("task",)  # env=mt1's single task name, read through `tasks: ["${env.task}"]`


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _section(cfg: Any, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    """`cfg` as a dict with exactly the `required` keys (plus any of `optional`); else one sentence."""
    required, optional = tuple(required), tuple(optional)
    prefix = f"{where}." if where else ""
    if not isinstance(cfg, dict):
        raise ConfigError(f"Config key {where} must be a group of keys ({', '.join(required)}), got {cfg!r}.")
    for key in required:
        if key not in cfg:
            raise MissingKeyError(
                f"Config key {prefix}{key} is missing; restore it in its file under configs/ "
                f"(`python -m mtrl_famo.train --cfg job` shows the full config) or pass +{prefix}{key}=<value>.",
                f"{prefix}{key}",
            )
    unknown = sorted(str(key) for key in cfg if key not in required and key not in optional)
    if unknown:
        raise ConfigError(
            f"Unknown config key {prefix}{unknown[0]}; valid keys there are {', '.join(required + optional)}."
        )
    return dict(cfg)


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value} is invalid; it must be a positive integer.")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; it must lie in [{low}, {high}].")


def from_dict(cfg: dict[str, Any], *, purpose: Purpose = "train") -> TrainConfig:
    """Build and validate a TrainConfig from the resolved Hydra config (a plain dict).

    Every key is required (the files under configs/ give each its default); a missing or an
    unknown key is refused in one sentence rather than filled in here.
    """
    top = _section(cfg, "", [*(keys[0] for keys in FIELD_KEYS.values() if len(keys) == 1), *SECTIONS])
    sections = {
        "env": _section(top["env"], "env", _names(EnvSpec), ENV_EXTRA_KEYS),
        "agent": _section(top["agent"], "agent", _names(AgentConfig)),
        "balancer": _section(top["balancer"], "balancer", _names(BalancerConfig)),
        "video": _section(top["video"], "video", _names(VideoConfig)),
        "wandb": _section(top["wandb"], "wandb", _names(WandbConfig)),
        **{
            name: _section(top[name], name, [keys[1] for keys in FIELD_KEYS.values() if keys[0] == name])
            for name in ("eval", "log", "checkpoint", "loop")
        },
    }
    check_scalar_types(sections)
    env_cfg, balancer_cfg = sections["env"], sections["balancer"]
    env = EnvSpec(
        name=str(env_cfg["name"]),
        tasks=tuple(str(t) for t in env_cfg["tasks"] or ()),
        one_hot=bool(env_cfg["one_hot"]),
        vector_strategy=str(env_cfg["vector_strategy"]),
        workers=env_cfg["workers"],
        max_episode_steps=int(env_cfg["max_episode_steps"]),
        goals=str(env_cfg["goals"]),
        reward_version=str(env_cfg["reward_version"]),
        reward_normalization=str(env_cfg["reward_normalization"]),
    )
    balancer = BalancerConfig(
        name=str(balancer_cfg["name"]),
        apply_to=tuple(balancer_cfg["apply_to"] or ()),
        options=dict(balancer_cfg["options"] or {}),
    )
    plain = {
        field: top[keys[0]] if len(keys) == 1 else sections[keys[0]][keys[1]] for field, keys in FIELD_KEYS.items()
    }
    plain["device"], plain["run_dir"], plain["progress"] = (
        str(plain["device"]),
        str(plain["run_dir"]),
        bool(plain["progress"]),
    )
    plain["experiment"], plain["eval_protocol"] = str(plain["experiment"]), str(plain["eval_protocol"])
    video_cfg, wandb_cfg = sections["video"], sections["wandb"]
    video = VideoConfig(**{**video_cfg, "tasks": "all" if video_cfg["tasks"] == "all" else tuple(video_cfg["tasks"])})
    wandb = WandbConfig(**{**wandb_cfg, "tags": tuple(wandb_cfg["tags"])})
    config = TrainConfig(
        env=env, agent=AgentConfig(**sections["agent"]), balancer=balancer, video=video, wandb=wandb, **plain
    )
    validate(config, purpose=purpose)
    return config


def check_scalar_types(sections: dict[str, dict[str, Any]]) -> None:
    """Refuse `agent.lr=abc`, `env.max_episode_steps=abc` and the like in one sentence, from the
    dataclasses' own type hints (the range checks in `validate` come after)."""
    for section, cls, keys in (
        ("agent", AgentConfig, _names(AgentConfig)),
        (
            "env",
            EnvSpec,
            (
                "one_hot",
                "vector_strategy",
                "workers",
                "max_episode_steps",
                "goals",
                "reward_version",
                "reward_normalization",
            ),
        ),
        ("eval", TrainConfig, ("background", "video")),
        ("video", VideoConfig, _names(VideoConfig)),
        ("wandb", WandbConfig, _names(WandbConfig)),
        ("loop", TrainConfig, ("overlap",)),
    ):
        hints = typing.get_type_hints(cls)
        for key in keys:
            value = sections[section][key]
            hint = hints[FIELD_OF.get((section, key), key)]
            if not matches(value, hint):
                raise ConfigError(f"{section}.{key}={value!r} is invalid; it must be {describe(hint)}.")


def check_device(device: str) -> None:
    """`auto`, `cpu`, `cuda` or `cuda:N`, and a CUDA device only where this machine has one."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device not in ("auto", "cpu") and match is None:
        raise ConfigError(f"device={device} is invalid; choose auto, cpu, cuda or cuda:N.")
    if match is None:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={device} was asked for but this machine has no usable CUDA device (torch.cuda.is_available() is "
            "False); use device=cpu, or device=auto to take a GPU only where there is one."
        )
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise ConfigError(
            f"device={device} does not exist; this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}."
        )


def check_positive_losses(balancer: BalancerConfig, built: balancers.Balancer) -> None:
    """Refuse a balancer that needs positive losses on a loss that is normally negative (SAC's actor loss)."""
    for loss in balancer.apply_to:
        if loss in LOSSES_THAT_CAN_BE_NEGATIVE and not built.accepts_negative_losses():
            bound = type(built).loss_bound_option
            bound_fix = f", or set balancer.options.{bound} below the lowest {loss} loss" if bound else ""
            others = [name for name in balancer.apply_to if name not in LOSSES_THAT_CAN_BE_NEGATIVE] or ["critic"]
            raise ConfigError(
                f"balancer={balancer.name} needs positive losses but balancer.apply_to includes the {loss} loss, "
                "which in "
                f"SAC (alpha log pi - Q) is normally negative and would stop training with an error; keep "
                f"balancer.apply_to=[{','.join(others)}]{bound_fix}."
            )


def validate(config: TrainConfig, *, purpose: Purpose = "train") -> None:
    """Raise ConfigError naming the first bad value and what would be valid."""
    try:
        config.env.validate()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not isinstance(config.seed, int) or isinstance(config.seed, bool) or config.seed < 0:
        raise ConfigError(f"seed={config.seed} is invalid; it must be a non-negative integer.")
    _positive("steps", config.steps)
    _positive("eval.every", config.eval_every)
    _positive("eval.episodes", config.eval_episodes)
    _positive("log.every", config.log_every)
    _positive("log.conflicts_every", config.conflicts_every)
    every = config.checkpoint_every
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(
            f"checkpoint.every={every} is invalid; it must be a non-negative integer "
            "(0 = only at the end and on signals)."
        )
    if config.eval_every > config.steps:
        raise ConfigError(
            f"eval.every={config.eval_every} is larger than steps={config.steps}; no evaluation would run, "
            "choose eval.every <= steps."
        )
    if config.eval_protocol not in EVAL_PROTOCOLS:
        raise ConfigError(f"Unknown eval.protocol '{config.eval_protocol}'; choose one of {', '.join(EVAL_PROTOCOLS)}.")
    agent = config.agent
    for key, choices in (("heads", HEADS), ("alpha", ALPHAS), ("init", INITS)):
        if getattr(agent, key) not in choices:
            raise ConfigError(f"Unknown agent.{key} '{getattr(agent, key)}'; choose one of {', '.join(choices)}.")
    for name in (
        "hidden_dim",
        "num_layers",
        "batch_size_per_task",
        "replay_size",
        "updates_per_step",
        "actor_update_every",
        "target_update_every",
    ):
        _positive(f"agent.{name}", getattr(agent, name))
    if not isinstance(agent.warmup_steps, int) or agent.warmup_steps < 0:
        raise ConfigError(f"agent.warmup_steps={agent.warmup_steps} is invalid; it must be a non-negative integer.")
    num_tasks = len(config.env.task_names())
    if agent.replay_size < num_tasks:
        raise ConfigError(
            f"agent.replay_size={agent.replay_size} is smaller than the {num_tasks} tasks; give each task room."
        )
    if agent.lr <= 0:
        raise ConfigError(f"agent.lr={agent.lr} is invalid; it must be positive.")
    _in_range("agent.discount", agent.discount, 0.0, 1.0)
    _in_range("agent.tau", agent.tau, 0.0, 1.0)
    if agent.init_temperature <= 0:
        raise ConfigError(f"agent.init_temperature={agent.init_temperature} is invalid; it must be positive.")
    if agent.log_std_min >= agent.log_std_max:
        raise ConfigError(f"agent.log_std_min={agent.log_std_min} must be below agent.log_std_max={agent.log_std_max}.")
    check_device(config.device)

    balancer = config.balancer
    if balancer.name not in balancers.NAMES:
        raise ConfigError(f"Unknown balancer '{balancer.name}'; choose one of {', '.join(balancers.NAMES)}.")
    for loss in balancer.apply_to:
        if loss not in BALANCED_LOSSES:
            raise ConfigError(
                f"balancer.apply_to names unknown loss '{loss}'; choose from {', '.join(BALANCED_LOSSES)}."
            )
    try:
        built = balancers.make(balancer.name, num_tasks, **balancer.options)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None
    check_positive_losses(balancer, built)
    from mtrl_famo.compiled_update import check_config  # late: it imports the learner and balancers

    try:
        check_config(agent.compile, agent.cuda_graph, config.device, balancer.name, balancer.apply_to)
    except ValueError as error:
        raise ConfigError(str(error)) from None

    from mtrl_famo.memory import check_memory  # late: mtrl_famo.memory imports this module

    check_memory(config, purpose)
    from mtrl_famo.video import check_video  # late: these import this module
    from mtrl_famo.wandb_logger import check_wandb

    check_wandb(config.wandb)
    check_video(config.video, config.env, enabled=config.eval_video)  # last: it may render a probe frame


def compose(*overrides: str) -> TrainConfig:
    """The validated TrainConfig that `python -m mtrl_famo.train <overrides>` would run.

    For scripts and tests: the same config files, the same Hydra composition, the same checks;
    an override Hydra cannot apply is a ConfigError too.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        first_line = str(error).strip().splitlines()[0]
        if first_line.startswith("Could not override"):
            first_line = (
                first_line.rstrip(".") + ": no such config key; `python -m mtrl_famo.train --cfg job` lists them all."
            )
        raise ConfigError(first_line) from None
    return from_dict(resolved)
