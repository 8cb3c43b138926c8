"""Typed view of the Hydra config and its validation (one clear sentence per mistake)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtrl_famo.envs.builder import EnvSpec
from mtrl_famo import balancers
from mtrl_famo.learner import BALANCED_LOSSES


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """Bad user input, reported as one sentence before any work starts."""


@dataclass(frozen=True)
class AgentConfig:
    hidden_dim: int = 400
    num_layers: int = 3
    batch_size_per_task: int = 128
    warmup_steps: int = 1500
    replay_size: int = 1_000_000
    updates_per_step: int = 1
    lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    actor_update_every: int = 1
    target_update_every: int = 1
    init_temperature: float = 1.0
    log_std_min: float = -20.0
    log_std_max: float = 2.0


@dataclass(frozen=True)
class BalancerConfig:
    name: str = "mtsac"
    apply_to: tuple[str, ...] = ("critic", "actor")
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    env: EnvSpec
    agent: AgentConfig
    balancer: BalancerConfig
    seed: int = 0
    device: str = "auto"
    steps: int = 2_000_000
    run_dir: str = "runs/default"
    progress: bool = True
    eval_every: int = 30_000
    eval_episodes: int = 10
    log_every: int = 1000
    conflicts_every: int = 100
    checkpoint_every: int = 50_000


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value} is invalid; it must be a positive integer.")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; it must lie in [{low}, {high}].")


def from_dict(cfg: dict[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from the resolved Hydra config (a plain dict)."""
    env_cfg = dict(cfg["env"])
    agent_cfg = dict(cfg["agent"])
    balancer_cfg = dict(cfg["balancer"])
    eval_cfg = dict(cfg.get("eval", {}))
    log_cfg = dict(cfg.get("log", {}))
    checkpoint_cfg = dict(cfg.get("checkpoint", {}))

    env = EnvSpec(
        name=str(env_cfg["name"]),
        tasks=tuple(str(t) for t in env_cfg.get("tasks") or ()),
        one_hot=bool(env_cfg.get("one_hot", True)),
        vector_strategy=str(env_cfg.get("vector_strategy", "sync")),
        max_episode_steps=int(env_cfg.get("max_episode_steps", 500)),
    )
    unknown_agent = set(agent_cfg) - set(AgentConfig.__dataclass_fields__)
    if unknown_agent:
        raise ConfigError(
            f"Unknown agent option(s) {sorted(unknown_agent)}; valid ones are {', '.join(AgentConfig.__dataclass_fields__)}."
        )
    agent = AgentConfig(**agent_cfg)
    balancer = BalancerConfig(
        name=str(balancer_cfg["name"]),
        apply_to=tuple(balancer_cfg.get("apply_to") or ()),
        options=dict(balancer_cfg.get("options") or {}),
    )
    config = TrainConfig(
        env=env,
        agent=agent,
        balancer=balancer,
        seed=cfg.get("seed", 0),
        device=str(cfg.get("device", "auto")),
        steps=cfg.get("steps", 2_000_000),
        run_dir=str(cfg.get("run_dir", "runs/default")),
        progress=bool(cfg.get("progress", True)),
        eval_every=eval_cfg.get("every", 30_000),
        eval_episodes=eval_cfg.get("episodes", 10),
        log_every=log_cfg.get("every", 1000),
        conflicts_every=log_cfg.get("conflicts_every", 100),
        checkpoint_every=checkpoint_cfg.get("every", 50_000),
    )
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
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
        raise ConfigError(f"checkpoint.every={every} is invalid; it must be a non-negative integer (0 = only at the end and on signals).")
    if config.eval_every > config.steps:
        raise ConfigError(
            f"eval.every={config.eval_every} is larger than steps={config.steps}; no evaluation would run, "
            "choose eval.every <= steps."
        )
    agent = config.agent
    for name in ("hidden_dim", "num_layers", "batch_size_per_task", "replay_size", "updates_per_step",
                 "actor_update_every", "target_update_every"):
        _positive(f"agent.{name}", getattr(agent, name))
    if not isinstance(agent.warmup_steps, int) or agent.warmup_steps < 0:
        raise ConfigError(f"agent.warmup_steps={agent.warmup_steps} is invalid; it must be a non-negative integer.")
    num_tasks = len(config.env.task_names())
    if agent.replay_size < num_tasks:
        raise ConfigError(f"agent.replay_size={agent.replay_size} is smaller than the {num_tasks} tasks; give each task room.")
    if agent.lr <= 0:
        raise ConfigError(f"agent.lr={agent.lr} is invalid; it must be positive.")
    _in_range("agent.discount", agent.discount, 0.0, 1.0)
    _in_range("agent.tau", agent.tau, 0.0, 1.0)
    if agent.init_temperature <= 0:
        raise ConfigError(f"agent.init_temperature={agent.init_temperature} is invalid; it must be positive.")
    if agent.log_std_min >= agent.log_std_max:
        raise ConfigError(f"agent.log_std_min={agent.log_std_min} must be below agent.log_std_max={agent.log_std_max}.")
    if config.device != "auto" and not (config.device == "cpu" or config.device.startswith("cuda")):
        raise ConfigError(f"device={config.device} is invalid; choose auto, cpu, cuda or cuda:N.")

    balancer = config.balancer
    if balancer.name not in balancers.NAMES:
        raise ConfigError(f"Unknown balancer '{balancer.name}'; choose one of {', '.join(balancers.NAMES)}.")
    for loss in balancer.apply_to:
        if loss not in BALANCED_LOSSES:
            raise ConfigError(f"balancer.apply_to names unknown loss '{loss}'; choose from {', '.join(BALANCED_LOSSES)}.")
    try:
        balancers.make(balancer.name, num_tasks, **balancer.options)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def compose(*overrides: str) -> TrainConfig:
    """The validated TrainConfig that `python -m mtrl_famo.train <overrides>` would run.

    For scripts and tests: the same config files, the same Hydra composition, the same checks.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return from_dict(OmegaConf.to_container(cfg, resolve=True))
