"""The config schema: one frozen dataclass per section of the YAML tree under configs/, and the checks
that need nothing but the values (one clear sentence per mistake).

The config files under configs/ are the one home of every run default: the dataclasses here have no
defaults, and `from_dict` requires every key (a missing or unknown key is one sentence). The tree and
the dataclasses mirror each other: `config.eval.every` is `eval: every:`, and `dataclasses.asdict` of a
TrainConfig has the shape of the YAML tree.

What a key is for besides its value is field metadata (`roles`): whether it may change when a run
resumes (`resumable`), whether it fixes the agent's shape (`shape`), whether it is part of the protocol a
success rate is measured under (`protocol`). `keys_with_role` lists the dotted keys of a role; the
trainer, `python -m mtrl_famo.evaluate` and the report read their lists from there.

The choices of a key (heads, temperatures, protocols, ...) are `Literal` types here, their one home;
the modules that implement them import the tuples below. This module imports neither torch nor
gymnasium: checks that need the machine (device, memory, compile, launcher, video backend, W&B, the
balancers' own option checks) are mtrl_famo.preflight's.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from mtrl_famo.configs import CONFIG_DIR  # re-exported: the one home of the config location
from mtrl_famo.typecheck import choices_of, describe, matches


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

# ----- choices (their one home; the implementing modules import these) --------------------------------
# Metaworld's own multitask benchmarks: env=<name> builds `Meta-World/<NAME>` with its task list and order.
MetaworldBenchmark = Literal["mt10", "mt25", "mt50"]
EnvName = Literal["mt10", "mt25", "mt50", "mt1", "custom"]
# sync: every sub-env in this process; async: gymnasium's AsyncVectorEnv, one process per task;
# workers: `env.workers` processes, each stepping a contiguous group of tasks (envs/workers.py).
VectorStrategy = Literal["sync", "async", "workers"]
# random: each reset draws one of the task's 50 goals (Metaworld's default).
# fixed: one goal per task, drawn once from the seed and kept (the published mtrl runs).
Goals = Literal["random", "fixed"]
RewardVersion = Literal["v2", "v1"]  # Metaworld 3 ships both reward functions
# none: raw rewards. running_std: per task, reward / sqrt(running variance) (see envs/reward_scale.py).
RewardNormalization = Literal["none", "running_std"]
# per_task: one output head per task (multi-head SAC). shared: one head for all tasks (the published
# mtrl runs: with no task id in the observation, the networks then cannot tell tasks apart).
Heads = Literal["per_task", "shared"]
# per_task: one learned temperature per task. shared: one temperature for all tasks.
Alphas = Literal["per_task", "shared"]
# pytorch: nn.Linear's default (uniform in +-1/sqrt(fan_in), weights and biases).
# xavier: Xavier-uniform weights and zero biases (the published mtrl code's initialisation).
Inits = Literal["pytorch", "xavier"]
# The evaluation protocols of envs/evaluation.py (its PROTOCOLS table has exactly these keys).
EvalProtocolName = Literal["any_success", "metaworld"]
# The losses a balancer may be applied to (mtrl_famo.learner updates them in this order).
BalancedLoss = Literal["critic", "actor"]
# The balancers: one per file configs/balancer/<name>.yaml, the home of its defaults (the registry of
# mtrl_famo.balancers holds exactly these names; tests/test_config_schema.py checks it).
BALANCER_NAMES: tuple[str, ...] = tuple(sorted(path.stem for path in (CONFIG_DIR / "balancer").glob("*.yaml")))
BalancerName = Literal[BALANCER_NAMES]  # type: ignore[valid-type]
# The networks of the actor and the critics: one per file configs/agent/network/<name>.yaml, the home of its
# options' defaults (mtrl_famo.agents.registry.NETWORKS holds exactly these names; tests/test_config_schema.py
# checks it). Chosen by the `agent/network` config group; the options are the file's other keys.
NETWORK_DIR = CONFIG_DIR / "agent" / "network"
NETWORK_NAMES: tuple[str, ...] = tuple(sorted(path.stem for path in NETWORK_DIR.glob("*.yaml")))
NetworkName = Literal[NETWORK_NAMES]  # type: ignore[valid-type]
# What a periodic reset (agent.reset_every) may re-initialise: the actor, the twin critics (their targets
# become copies), the learned temperature(s) (back to agent.init_temperature); each with its Adam state.
ResetPart = Literal["actor", "critic", "temperature"]

METAWORLD_BENCHMARKS: tuple[str, ...] = typing.get_args(MetaworldBenchmark)
BENCHMARKS: tuple[str, ...] = typing.get_args(EnvName)
VECTOR_STRATEGIES: tuple[str, ...] = typing.get_args(VectorStrategy)
GOALS: tuple[str, ...] = typing.get_args(Goals)
REWARD_VERSIONS: tuple[str, ...] = typing.get_args(RewardVersion)
REWARD_NORMALIZATIONS: tuple[str, ...] = typing.get_args(RewardNormalization)
HEADS: tuple[str, ...] = typing.get_args(Heads)
ALPHAS: tuple[str, ...] = typing.get_args(Alphas)
INITS: tuple[str, ...] = typing.get_args(Inits)
EVAL_PROTOCOLS: tuple[str, ...] = typing.get_args(EvalProtocolName)
RESET_PARTS: tuple[str, ...] = typing.get_args(ResetPart)
BALANCED_LOSSES: tuple[str, ...] = typing.get_args(BalancedLoss)
# The balanced losses that can be negative: the actor loss E[alpha log pi(a|s) - min Q(s, a)] is
# below zero whenever Q exceeds alpha log pi, which in SAC it normally does. (The critic loss is a
# squared error, never negative.) Balancers that need positive losses are refused for these.
LOSSES_THAT_CAN_BE_NEGATIVE = frozenset({"actor"})

# The cameras every Metaworld v3 task has (metaworld/assets/objects/assets/xyz_base.xml).
Camera = Literal["corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV"]
CAMERAS: tuple[str, ...] = typing.get_args(Camera)
MAX_GIF_FPS = 50  # GIF frame delays are whole hundredths of a second, and browsers slow down below 2
MIN_SIZE, MAX_SIZE = 16, 4096  # pixels per side of a video frame

# Every Metaworld v3 task observes 39 numbers (plus the task one-hot when one_hot) and acts in 4.
METAWORLD_OBS_DIM = 39
METAWORLD_ACTION_DIM = 4

# ----- roles ------------------------------------------------------------------------------------------
# resumable: may change between a checkpoint and its resumption without changing the run.
# shape: fixes the agent's shape or the meaning of its rows (task i = row i); evaluation may not change it.
# protocol: defines what a success rate means (how it was trained for and measured); the report warns
# about runs of one group that differ in it.
Role = Literal["resumable", "shape", "protocol"]
ROLES: tuple[str, ...] = typing.get_args(Role)


def roles(*names: Role) -> dict[str, frozenset[str]]:
    """Field metadata giving a key these roles: `field(metadata=roles("shape"))`."""
    return {"roles": frozenset(names)}


def _roles(metadata: Mapping[str, Any]) -> frozenset[str]:
    return metadata.get("roles", frozenset())


# ----- the sections -----------------------------------------------------------------------------------
def known_task_names() -> list[str]:
    """All Metaworld v3 task names, in the benchmark's MT50 order (Metaworld's table, read when asked)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS.keys())


def benchmark_task_names(name: str) -> list[str]:
    """Task names of a Metaworld benchmark (one of METAWORLD_BENCHMARKS) in sub-env order: the class
    table Metaworld's own benchmark builds from (`metaworld.env_dict.MT10_V3`, `MT25_V3`, `MT50_V3`)."""
    from metaworld import env_dict

    return list(getattr(env_dict, f"{name.upper()}_V3").keys())


@dataclass(frozen=True)
class EnvSpec:
    """The env section (configs/env/*.yaml): what mtrl_famo.envs.build_env builds. `tasks` is only read
    for `mt1` (one task) and `custom` (a list).

    No defaults here: those of a run live in configs/env/*.yaml (`mtrl_famo.config.compose`).
    """

    # Keys the section may hold besides its fields, with their roles: env=mt1's single task name, which
    # its file reads into `tasks: ["${env.task}"]`.
    EXTRA_KEYS: ClassVar[dict[str, frozenset[str]]] = {"task": frozenset({"shape"})}

    name: EnvName = field(metadata=roles("shape"))
    one_hot: bool = field(metadata=roles("shape"))
    # Every strategy steps the same sub-envs bit for bit; `workers` is the process count of vector_strategy=workers
    # (a count, or auto: envs.builder.worker_count).
    vector_strategy: VectorStrategy = field(metadata=roles("resumable"))
    workers: int | Literal["auto"] = field(metadata=roles("resumable"))
    max_episode_steps: int = field(metadata=roles("protocol"))
    goals: Goals = field(metadata=roles("protocol"))
    reward_version: RewardVersion = field(metadata=roles("protocol"))
    reward_normalization: RewardNormalization = field(metadata=roles("protocol"))
    tasks: tuple[str, ...] = field(default=(), metadata=roles("shape"))  # the benchmarks ignore it

    def task_names(self) -> list[str]:
        if self.name in METAWORLD_BENCHMARKS:
            return benchmark_task_names(self.name)
        return list(self.tasks)

    def dims(self) -> tuple[int, int]:
        """(obs_dim, action_dim) of the vector env `build_env` builds from this spec, without building it."""
        return METAWORLD_OBS_DIM + (len(self.task_names()) if self.one_hot else 0), METAWORLD_ACTION_DIM

    def validate(self) -> None:
        """Raise ValueError (a ConfigError: one sentence) for anything Metaworld would reject later."""
        check_values(EnvSpec, {f.name: getattr(self, f.name) for f in fields(self)}, "env")
        if self.workers != "auto" and self.workers < 1:
            raise ConfigError(f"env.workers={self.workers} is invalid; choose auto or a positive integer.")
        if not 1 <= self.max_episode_steps <= 500:
            raise ConfigError(
                f"env.max_episode_steps={self.max_episode_steps} is out of range; Metaworld "
                "episodes last between 1 and 500 steps."
            )
        if self.name in ("mt1", "custom"):
            known = known_task_names()
            if self.name == "mt1" and len(self.tasks) != 1:
                raise ConfigError(f"env=mt1 needs exactly one task in env.task, got {list(self.tasks)}.")
            if self.name == "custom" and not self.tasks:
                raise ConfigError("env=custom needs a non-empty env.tasks list, e.g. env.tasks=[reach-v3,push-v3].")
            for task in self.tasks:
                if task not in known:
                    raise ConfigError(f"Unknown Metaworld task '{task}'; choose from {', '.join(known)}.")
            if len(set(self.tasks)) != len(self.tasks):
                raise ConfigError(f"env.tasks lists a task twice: {list(self.tasks)}; each task must appear once.")


@dataclass(frozen=True)
class AgentConfig:
    """configs/agent/sac.yaml, key for key (documented and defaulted there)."""

    heads: Heads = field(metadata=roles("shape", "protocol"))
    alpha: Alphas = field(metadata=roles("shape", "protocol"))
    init: Inits
    hidden_dim: int = field(metadata=roles("shape"))
    num_layers: int = field(metadata=roles("shape"))
    critic_hidden_dim: int | None = field(metadata=roles("shape"))  # None: hidden_dim
    critic_layernorm: bool = field(metadata=roles("shape", "protocol"))
    batch_size_per_task: int
    warmup_steps: int
    replay_size: int
    updates_per_step: int
    lr: float
    discount: float
    tau: float
    actor_update_every: int
    target_update_every: int
    # Periodic resets: every reset_every environment steps per task (0 = never), the parts in `reset`.
    reset_every: int = field(metadata=roles("protocol"))
    reset: tuple[ResetPart, ...] = field(metadata=roles("protocol"))
    init_temperature: float
    log_std_min: float
    log_std_max: float
    # Speed layers that change no result (mtrl_famo.compiled_update resolves auto).
    compile: bool | Literal["auto"] = field(metadata=roles("resumable"))
    cuda_graph: bool | Literal["auto"] = field(metadata=roles("resumable"))
    # The `agent/network` group (configs/agent/network/<name>.yaml): `name` and the network's own options,
    # as in its file (`agent.network.num_experts`); checked by `check_network`.
    network: dict[str, Any] = field(metadata=roles("shape", "protocol"))


@dataclass(frozen=True)
class BalancerConfig:
    """configs/balancer/<name>.yaml: the method, the losses it balances and its options."""

    name: BalancerName
    apply_to: tuple[BalancedLoss, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class VideoConfig:
    """configs/video/default.yaml, key for key: what `eval.video=true` records (docs/observability.md)."""

    every: int  # at every Nth evaluation (and at the final one)
    tasks: Literal["all"] | tuple[str, ...]
    camera: Camera
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
class EvalConfig:
    """configs/config.yaml's `eval:` group."""

    every: int = field(metadata=roles("protocol"))  # every this many environment steps per task (and at the end)
    episodes: int = field(metadata=roles("protocol"))  # deterministic episodes per task per evaluation
    protocol: EvalProtocolName = field(metadata=roles("protocol"))
    background: bool = field(metadata=roles("resumable"))  # same results, computed in a worker process
    video: bool = field(metadata=roles("resumable"))  # observability: what is recorded, not what is trained


@dataclass(frozen=True)
class LogConfig:
    """configs/config.yaml's `log:` group."""

    every: int  # train/loss/perf scalars every this many environment steps per task
    conflicts_every: int  # gradient-conflict statistics every this many updates


@dataclass(frozen=True)
class CheckpointConfig:
    """configs/config.yaml's `checkpoint:` group."""

    every: int = field(metadata=roles("resumable"))  # 0 = only at the end and on signals


@dataclass(frozen=True)
class LoopConfig:
    """configs/config.yaml's `loop:` group."""

    overlap: bool  # updates run while the env workers step (mtrl_famo.trainer.Trainer.step)


@dataclass(frozen=True)
class TrainConfig:
    """configs/config.yaml with its groups, in the order of that file."""

    env: EnvSpec
    agent: AgentConfig
    balancer: BalancerConfig
    video: VideoConfig = field(metadata=roles("resumable"))
    wandb: WandbConfig = field(metadata=roles("resumable"))
    experiment: str
    seed: int
    device: str = field(metadata=roles("resumable"))
    steps: int = field(metadata=roles("resumable"))
    run_dir: str = field(metadata=roles("resumable"))
    progress: bool = field(metadata=roles("resumable"))
    eval: EvalConfig
    log: LogConfig
    checkpoint: CheckpointConfig
    loop: LoopConfig


def _section_types(cls: type) -> dict[str, type]:
    """The fields of `cls` that are sections (dataclasses) themselves, by name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def keys_with_role(wanted: Role, cls: type = TrainConfig, prefix: str = "") -> tuple[str, ...]:
    """The dotted config keys with role `wanted`, in the order of the schema. A section with the role
    counts as a whole (`video`); other sections are searched key by key, extra keys included (`env.task`)."""
    if wanted not in ROLES:
        raise ValueError(f"Unknown role '{wanted}'; choose one of {', '.join(ROLES)}.")
    sections = _section_types(cls)
    keys: list[str] = []
    for item in fields(cls):
        if wanted in _roles(item.metadata):
            keys.append(prefix + item.name)
        elif item.name in sections:
            keys.extend(keys_with_role(wanted, sections[item.name], f"{prefix}{item.name}."))
    extra: dict[str, frozenset[str]] = getattr(cls, "EXTRA_KEYS", {})
    keys.extend(prefix + name for name, roles in extra.items() if wanted in roles)
    return tuple(keys)


# ----- reading and checking ---------------------------------------------------------------------------
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


def _label(where: str, key: str) -> str:
    """How a key is named in a sentence: a section's `name` by the section (`env 'mt11'`, `balancer 'adam'`)."""
    return where if key == "name" and where in ("env", "balancer") else f"{where}.{key}" if where else key


def check_values(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Refuse a value that does not fit its field's type hint in `cls`, in one sentence: a choice
    (`Literal`) names the bad value and the valid ones, any other type says what the value must be.
    Sections (dataclass fields) are left to their own call."""
    hints = typing.get_type_hints(cls)
    for item in fields(cls):
        hint, value = hints[item.name], values[item.name]
        if dataclasses.is_dataclass(hint) or matches(value, hint):
            continue
        label = _label(where, item.name)
        options = choices_of(hint)
        if options is not None:
            raise ConfigError(f"Unknown {label} '{value}'; choose one of {', '.join(map(str, options))}.")
        item_options = choices_of(typing.get_args(hint)[0]) if typing.get_origin(hint) is tuple else None
        if item_options is not None and isinstance(value, (list, tuple)):
            bad = next(element for element in value if element not in item_options)
            raise ConfigError(f"{label} names unknown '{bad}'; choose from {', '.join(map(str, item_options))}.")
        raise ConfigError(f"{label}={value!r} is invalid; it must be {describe(hint)}.")


@dataclass(frozen=True)
class _NetworkChoice:
    """The network's name alone, for `check_values`' generic choice check."""

    name: NetworkName


def network_option_defaults(name: str) -> dict[str, Any]:
    """The options of network `name` with the values its file configs/agent/network/<name>.yaml gives them."""
    import yaml

    values = yaml.safe_load((NETWORK_DIR / f"{name}.yaml").read_text()) or {}
    values.pop("name", None)
    return values


def check_network(network: Mapping[str, Any], where: str = "agent.network") -> None:
    """One sentence for a network section that does not fit: an unknown name, an option its file does not
    have or lacks, a value of another type than the file's (a count below 1)."""
    if "name" not in network:
        raise ConfigError(f"{where}.name is missing; choose one with agent/network=<{'|'.join(NETWORK_NAMES)}>.")
    check_values(_NetworkChoice, {"name": network["name"]}, where)
    name, defaults = network["name"], network_option_defaults(network["name"])
    options = {key: value for key, value in network.items() if key != "name"}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ConfigError(f"Unknown config key {where}.{unknown[0]}; network '{name}' has the options: {valid}.")
    missing = sorted(set(defaults) - set(options))
    if missing:
        raise MissingKeyError(
            f"Config key {where}.{missing[0]} is missing; restore it in configs/agent/network/{name}.yaml.",
            f"{where}.{missing[0]}",
        )
    for key, default in defaults.items():
        value, hint = options[key], type(default)
        if not matches(value, hint):
            raise ConfigError(f"{where}.{key}={value!r} is invalid; it must be {describe(hint)}.")
        if hint is int and value < 1:
            raise ConfigError(f"{where}.{key}={value} is invalid; it must be a positive integer.")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name}={value} is invalid; it must be a positive integer.")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; it must lie in [{low}, {high}].")


def _read(cls: type, cfg: Any, where: str) -> Any:
    """Section `cls` from its part of the resolved config: every key present, each value of its type
    (lists become tuples; a null list or mapping an empty one), nested sections read the same way."""
    extra: dict[str, frozenset[str]] = getattr(cls, "EXTRA_KEYS", {})
    raw = _section(cfg, where, _names(cls), tuple(extra))
    sections = _section_types(cls)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name in _names(cls):
        value, hint = raw[name], hints[name]
        if name in sections:
            value = _read(sections[name], value, f"{where}.{name}" if where else name)
        elif value is None and typing.get_origin(hint) in (tuple, dict):
            value = typing.get_origin(hint)()
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    check_values(cls, values, where)
    return cls(**values)


def from_dict(cfg: dict[str, Any]) -> TrainConfig:
    """Build and check a TrainConfig from the resolved Hydra config (a plain dict).

    Every key is required (the files under configs/ give each its default); a missing or an
    unknown key is refused in one sentence rather than filled in here. The machine is not asked
    anything: mtrl_famo.preflight.check does that.
    """
    config = _read(TrainConfig, cfg, "")
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise ConfigError naming the first bad value and what would be valid (types and choices were
    checked on reading, `check_values`; these are the ranges and the relations between keys)."""
    config.env.validate()
    if config.seed < 0:
        raise ConfigError(f"seed={config.seed} is invalid; it must be a non-negative integer.")
    _positive("steps", config.steps)
    _positive("eval.every", config.eval.every)
    _positive("eval.episodes", config.eval.episodes)
    _positive("log.every", config.log.every)
    _positive("log.conflicts_every", config.log.conflicts_every)
    if config.checkpoint.every < 0:
        raise ConfigError(
            f"checkpoint.every={config.checkpoint.every} is invalid; it must be a non-negative integer "
            "(0 = only at the end and on signals)."
        )
    if config.eval.every > config.steps:
        raise ConfigError(
            f"eval.every={config.eval.every} is larger than steps={config.steps}; no evaluation would run, "
            "choose eval.every <= steps."
        )
    agent = config.agent
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
    if agent.critic_hidden_dim is not None:
        _positive("agent.critic_hidden_dim", agent.critic_hidden_dim)
    check_network(agent.network)
    if agent.reset_every < 0:
        raise ConfigError(
            f"agent.reset_every={agent.reset_every} is invalid; it must be a non-negative integer (0 = no resets)."
        )
    if agent.reset_every and not agent.reset:
        raise ConfigError(
            f"agent.reset=[] with agent.reset_every={agent.reset_every} would reset nothing; name parts to reset "
            f"({', '.join(RESET_PARTS)}) or set agent.reset_every=0."
        )
    if len(set(agent.reset)) != len(agent.reset):
        raise ConfigError(f"agent.reset lists a part twice: {list(agent.reset)}; each part must appear once.")
    if agent.warmup_steps < 0:
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
    check_video_settings(config.video, config.env)
    if config.wandb.enabled and not config.wandb.project.strip():
        raise ConfigError("wandb.project='' is invalid; name a W&B project, e.g. wandb.project=mtrl_famo.")


def check_video_settings(settings: VideoConfig, spec: EnvSpec) -> None:
    """Refuse a bad `video.*` value in one sentence (whether this machine can record is
    mtrl_famo.video.check_video's question, asked by the pre-flight)."""
    for key in ("every", "frame_stride"):
        _positive(f"video.{key}", getattr(settings, key))
    for key in ("width", "height"):
        value = getattr(settings, key)
        if not MIN_SIZE <= value <= MAX_SIZE or value % 2:
            raise ConfigError(
                f"video.{key}={value} is invalid; it must be an even number of pixels from {MIN_SIZE} to {MAX_SIZE} "
                "(H.264 video needs even sizes)."
            )
    if not 1 <= settings.fps <= MAX_GIF_FPS:
        raise ConfigError(
            f"video.fps={settings.fps} is invalid; it must lie in [1, {MAX_GIF_FPS}] (the most an animated GIF plays)."
        )
    if settings.tasks != "all":
        names = spec.task_names()
        if not settings.tasks:
            raise ConfigError("video.tasks=[] would record nothing; name some tasks, or use video.tasks=all.")
        for task in settings.tasks:
            if task not in names:
                raise ConfigError(
                    f"video.tasks names '{task}', which is not a task of env={spec.name}; "
                    f"choose from {', '.join(names)}."
                )
        if len(set(settings.tasks)) != len(settings.tasks):
            raise ConfigError(f"video.tasks lists a task twice: {list(settings.tasks)}; each task must appear once.")


def compose(*overrides: str, preflight: bool = True) -> TrainConfig:
    """The checked TrainConfig that `python -m mtrl_famo.train <overrides>` would run.

    For scripts and tests: the same config files, the same Hydra composition, the same checks (with
    `preflight`, mtrl_famo.preflight.check's machine checks too, as the CLI runs them; the run_dir is
    not created); an override Hydra cannot apply is a ConfigError too.
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
        missing = re.search(r"Could not find '([\w/]+)/([^/']+)'", first_line)
        if missing and (CONFIG_DIR / missing[1]).is_dir():  # e.g. agent/network=nope
            group, choice = missing[1], missing[2]
            choices = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
            first_line = f"Unknown {group} '{choice}'; choose one of {', '.join(choices)}."
        elif first_line.startswith("Could not override"):
            first_line = (
                first_line.rstrip(".") + ": no such config key; `python -m mtrl_famo.train --cfg job` lists them all."
            )
        raise ConfigError(first_line) from None
    config = from_dict(resolved)
    if preflight:
        # The one upward reach of this module, at call time: mtrl_famo.preflight sits a layer above (it
        # imports torch and this schema), and compose is the scripts' and tests' "what the CLI would run".
        from mtrl_famo.preflight import check

        check(config, "train")
    return config
