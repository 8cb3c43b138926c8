"""One home per default: the YAML under configs/ holds every run default, nothing else repeats it.

The classes and dataclasses have no defaults of their own; the balancers' `make` fills a code
caller's missing options from configs/balancer/<name>.yaml; `from_dict` requires every key.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from omegaconf import OmegaConf

from mtrl_famo import balancers
from mtrl_famo.agents.moore import MOORENetwork
from mtrl_famo.agents.networks import Actor, MultiHeadMLP, TwinCritic
from mtrl_famo.agents.paco import PaCoNetwork
from mtrl_famo.agents.registry import NETWORKS, network_factory
from mtrl_famo.agents.sac import MultiTaskSAC
from mtrl_famo.agents.soft_modular import SoftModularNetwork
from mtrl_famo.build import build_agent, build_balancers
from mtrl_famo.config import (
    CONFIG_DIR,
    AgentConfig,
    BalancerConfig,
    ConfigError,
    TrainConfig,
    compose,
    from_dict,
)

BALANCER_DIR = CONFIG_DIR / "balancer"


def yaml(path) -> dict:
    """A config file as written (interpolations unresolved), read here independently of the code."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def keyword_defaults(function) -> dict:
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


# ---------------------------------------------------------------- balancers


def test_every_balancer_has_a_config_file_and_no_other() -> None:
    assert sorted(p.stem for p in BALANCER_DIR.glob("*.yaml")) == sorted(balancers.NAMES)


@pytest.mark.parametrize("name", balancers.NAMES)
def test_config_file_options_are_exactly_the_constructor_options(name: str) -> None:
    """No option missing from the YAML (it would have no default) and none extra (it would be refused)."""
    written = yaml(BALANCER_DIR / f"{name}.yaml")
    assert written["name"] == name
    assert sorted(written["options"] or {}) == sorted(balancers.options_of(name))
    assert sorted(balancers.config_option_names(name)) == sorted(balancers.options_of(name))


@pytest.mark.parametrize("name", balancers.NAMES)
def test_balancer_constructors_have_no_defaults(name: str) -> None:
    assert keyword_defaults(balancers.REGISTRY[name].__init__) == {}


@pytest.mark.parametrize("name", balancers.NAMES)
def test_default_options_are_the_config_file_values(name: str) -> None:
    written = yaml(BALANCER_DIR / f"{name}.yaml")["options"] or {}
    standalone = {key: value for key, value in written.items() if not (isinstance(value, str) and "${" in value)}
    assert balancers.default_options(name) == standalone


def test_default_options_are_a_fresh_copy() -> None:
    balancers.default_options("famo")["gamma"] = 123.0
    assert balancers.default_options("famo")["gamma"] == yaml(BALANCER_DIR / "famo.yaml")["options"]["gamma"]


def test_famo_gamma_default_is_the_published_mtrl_value() -> None:
    """configs/balancer/famo.yaml says 0.01 (the published MT10 run.sh); the class used to say 0.001."""
    assert yaml(BALANCER_DIR / "famo.yaml")["options"]["gamma"] == 0.01
    assert balancers.default_options("famo")["gamma"] == 0.01
    for famo in (
        balancers.make("famo", 3),
        build_balancers(compose("balancer=famo").balancer, 10, torch.device("cpu"))["critic"],
    ):
        assert famo.optimizer.param_groups[0]["weight_decay"] == 0.01
        assert famo.optimizer.param_groups[0]["lr"] == 0.025


def balancer_settings(balancer) -> dict:
    """The option values a built balancer ended up with, read from its state."""
    if isinstance(balancer, balancers.REGISTRY["famo"]):
        group = balancer.optimizer.param_groups[0]
        return {
            "w_lr": group["lr"],
            "gamma": group["weight_decay"],
            "min_losses": balancer.min_losses.tolist(),
            "eps": balancer.eps,
        }
    if isinstance(balancer, balancers.REGISTRY["cagrad"]):
        return {"c": balancer.c, "rescale": balancer.rescale, "max_iter": balancer.max_iter, "tol": balancer.tol}
    if isinstance(balancer, balancers.REGISTRY["pcgrad"]):
        return {"reduction": balancer.reduction, "generator": balancer.generator.get_state().tolist()}
    # Any other method: its plain attributes (where options land) and its state, made comparable.
    plain = {key: value for key, value in vars(balancer).items() if isinstance(value, (bool, int, float, str))}
    return {**plain, "state": comparable(balancer.state_dict())}


def comparable(value):
    """Tensors, arrays and generator states as nested lists, so that two states compare with ==."""
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [comparable(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


@pytest.mark.parametrize("name", balancers.NAMES)
def test_cli_config_and_code_callers_get_the_same_yaml_values(name: str) -> None:
    seed = 3
    # env=custom: no configs/per_benchmark/balancer/<env>_<balancer>.yaml applies (see the next tests).
    config = compose("env=custom", f"balancer={name}", f"seed={seed}")
    written = yaml(BALANCER_DIR / f"{name}.yaml")
    resolved = {key: seed if value == "${seed}" else value for key, value in (written["options"] or {}).items()}
    assert config.balancer.options == resolved
    assert config.balancer.apply_to == tuple(written["apply_to"])
    assert config.balancer.apply_to[0] == "critic"  # the critic's balancer gets the options as written
    through_cli = build_balancers(config.balancer, 2, torch.device("cpu"))["critic"]
    through_code = balancers.make(name, 2, **({"seed": seed} if "seed" in balancers.options_of(name) else {}))
    assert type(through_cli) is type(through_code) is balancers.REGISTRY[name]
    assert balancer_settings(through_cli) == balancer_settings(through_code)
    if name == "famo":
        assert balancer_settings(through_cli)["min_losses"] == [resolved["min_losses"]] * 2


@pytest.mark.parametrize(
    ("overrides", "expected_c"),
    [
        (("env=mt10", "balancer=cagrad"), 0.9),  # CAGrad paper, MT10
        (("env=mt50", "balancer=cagrad"), 0.5),  # CAGrad paper, MT50
        (("env=custom", "balancer=cagrad"), 0.5),  # no published value: the balancer's own file
        (("env=mt10", "balancer=cagrad", "balancer.options.c=0.2"), 0.2),  # the command line wins
        (("env=mt10", "balancer=cagrad", "experiment=cagrad_paper"), 0.9),  # and presets keep it
    ],
)
def test_published_per_benchmark_values_come_from_hydra(overrides, expected_c) -> None:
    assert compose(*overrides).balancer.options["c"] == expected_c


def test_every_per_benchmark_file_names_a_real_env_and_group_choice() -> None:
    """A misspelt per-benchmark file would silently never apply (its defaults entry is optional)."""
    envs = {path.stem for path in (CONFIG_DIR / "env").glob("*.yaml")}
    for group in ("balancer", "experiment", "network"):
        folder = CONFIG_DIR / ("agent/network" if group == "network" else group)
        choices = {path.stem for path in folder.glob("*.yaml")}
        files = sorted((CONFIG_DIR / "per_benchmark" / group).glob("*.yaml"))
        assert files, group
        for path in files:
            pairs = [(a, b) for a in envs | choices for b in envs | choices if path.stem == f"{a}_{b}"]
            first, second = (group, "env") if group == "experiment" else ("env", group)
            assert any(
                (a in envs if first == "env" else a in choices) and (b in envs if second == "env" else b in choices)
                for a, b in pairs
            ), path


# ---------------------------------------------------------------- agent and the run


def test_agent_yaml_keys_are_exactly_the_agent_config_fields() -> None:
    """sac.yaml's keys, then `network` (the agent/network group, merged into agent.network after sac.yaml)."""
    fields = [f.name for f in dataclasses.fields(AgentConfig)]
    assert [*yaml(CONFIG_DIR / "agent" / "sac.yaml"), "network"] == fields


@pytest.mark.parametrize("cls", [AgentConfig, BalancerConfig, TrainConfig])
def test_config_dataclasses_have_no_defaults(cls) -> None:
    assert [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ] == []


NETWORK_CONSTRUCTORS = [
    MultiTaskSAC.__init__,
    Actor.__init__,
    TwinCritic.__init__,
    MultiHeadMLP.__init__,
    MOORENetwork.__init__,
    SoftModularNetwork.__init__,
    PaCoNetwork.__init__,
    network_factory,
]


@pytest.mark.parametrize("function", NETWORK_CONSTRUCTORS, ids=lambda function: function.__qualname__)
def test_network_constructors_have_no_defaults(function) -> None:
    assert keyword_defaults(function) == {}


def test_every_registered_network_constructor_is_checked() -> None:
    assert {cls.__init__ for cls in NETWORKS.values()} <= set(NETWORK_CONSTRUCTORS)


def test_compose_gives_the_yaml_agent_and_run_values() -> None:
    config = compose()
    network = yaml(CONFIG_DIR / "agent" / "network" / "multihead.yaml")
    written = {**yaml(CONFIG_DIR / "agent" / "sac.yaml"), "network": network}
    written["reset"] = tuple(written["reset"])  # lists are read as tuples (frozen sections)
    assert dataclasses.asdict(config.agent) == written
    top = yaml(CONFIG_DIR / "config.yaml")
    values = dataclasses.asdict(config)  # the shape of the config tree: eval.every is values["eval"]["every"]
    groups = ("env", "agent", "balancer", "video", "wandb")  # from their own files under configs/
    written = [item.name for item in dataclasses.fields(TrainConfig) if item.name not in groups]
    for name in written:
        if name != "run_dir":  # interpolated: runs/${env.name}/${agent.network.name}/${balancer.name}/seed=${seed}
            assert values[name] == top[name], name
    assert config.run_dir == "runs/mt10/multihead/mtsac/seed=0"
    assert set(top) - {"defaults", "hydra"} == set(written)


def test_build_agent_uses_every_agent_value() -> None:
    config = compose(
        "agent.hidden_dim=24",
        "agent.num_layers=2",
        "agent.discount=0.9",
        "agent.init_temperature=0.5",
        "agent.log_std_min=-7",
        "agent.log_std_max=1.5",
    )
    agent = build_agent(config.agent, 49, 4, 10, torch.device("cpu"))
    assert agent.discount == 0.9
    torch.testing.assert_close(agent.alpha(), torch.full((10, 1), 0.5))
    assert (agent.actor.log_std_min, agent.actor.log_std_max) == (-7, 1.5)
    linear = [m for m in agent.critic.q1.trunk if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [24, 24]


def test_build_agent_passes_the_network_and_the_critic_options() -> None:
    from mtrl_famo.agents.registry import NETWORKS

    config = compose(
        "agent/network=moore",
        "agent.network.num_experts=3",
        "agent.hidden_dim=24",
        "agent.num_layers=2",
        "agent.critic_hidden_dim=20",
        "agent.critic_layernorm=true",
    )
    agent = build_agent(config.agent, 49, 4, 10, torch.device("cpu"))
    assert type(agent.actor.net) is NETWORKS["moore"] and type(agent.critic.q1) is NETWORKS["moore"]
    assert agent.actor.net.task_weight.shape == (10, 1, 3)  # 3 experts
    norms = [m for m in agent.critic.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.normalized_shape == (20,) for m in norms)  # the critics' width and LayerNorm
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in agent.actor.modules())
    assert agent.actor.net.head_weight.shape[1] == 24  # the actor keeps agent.hidden_dim
    meta = build_agent(config.agent, 49, 4, 10, torch.device("meta"))
    assert [(n, p.shape) for n, p in meta.named_parameters()] == [(n, p.shape) for n, p in agent.named_parameters()]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # Published per-benchmark values, from configs/per_benchmark/network/<env>_<network>.yaml.
        (["env=mt50", "agent/network=moore"], {"num_experts": 6, "hidden_dim": 400, "num_layers": 3}),
        (["env=mt10", "agent/network=moore"], {"num_experts": 4, "hidden_dim": 400, "num_layers": 3}),
        (["env=mt50", "agent/network=paco"], {"num_parameter_sets": 20}),
        (["env=mt10", "agent/network=soft_modular"], {"num_modules": 2, "hidden_dim": 256, "num_layers": 2}),
        (["env=mt50", "agent/network=soft_modular"], {"num_modules": 4, "hidden_dim": 256, "num_layers": 4}),
        # ... over a protocol preset's multi-head sizes; the command line wins over both.
        (
            ["env=mt10", "agent/network=soft_modular", "experiment=metaworld_plus"],
            {"hidden_dim": 256, "num_layers": 2},
        ),
        (
            ["env=mt50", "agent/network=soft_modular", "agent.hidden_dim=64", "agent.network.num_modules=3"],
            {"num_modules": 3, "hidden_dim": 64, "num_layers": 4},
        ),
        (["env=mt25", "agent/network=soft_modular"], {"num_modules": 2, "hidden_dim": 400, "num_layers": 3}),
    ],
)
def test_network_sizes_per_benchmark_and_overrides(overrides: list[str], expected: dict) -> None:
    agent = compose(*overrides, preflight=False).agent
    got = {key: agent.network[key] if key in agent.network else getattr(agent, key) for key in expected}
    assert got == expected


# ---------------------------------------------------------------- from_dict: every key required


def full_dict() -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose(config_name="config", overrides=["env=custom"]), resolve=True)


@pytest.mark.parametrize(
    "path, shown",
    [
        (("agent", "lr"), "agent.lr is missing"),
        (("seed",), "seed is missing"),
        (("eval", "episodes"), "eval.episodes is missing"),
        (("env", "max_episode_steps"), "env.max_episode_steps is missing"),
        (("balancer", "apply_to"), "balancer.apply_to is missing"),
        (("checkpoint",), "checkpoint is missing"),
    ],
)
def test_a_missing_key_is_one_sentence_not_a_hidden_default(path: tuple[str, ...], shown: str) -> None:
    cfg = full_dict()
    section = cfg
    for key in path[:-1]:
        section = section[key]
    del section[path[-1]]
    with pytest.raises(ConfigError) as error:
        from_dict(cfg)
    message = str(error.value)
    assert shown in message and "\n" not in message and message.endswith(".")


@pytest.mark.parametrize(
    "path, shown",
    [
        (
            ("agent", "learning_rate"),
            "Unknown config key agent.learning_rate; valid keys there are heads, alpha, init, hidden_dim",
        ),
        (("eval", "seeds"), "Unknown config key eval.seeds; valid keys there are every, episodes, protocol"),
        (("steps_per_task",), "Unknown config key steps_per_task"),
    ],
)
def test_an_unknown_key_is_one_sentence(path: tuple[str, ...], shown: str) -> None:
    cfg = full_dict()
    section = cfg
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = 1
    with pytest.raises(ConfigError) as error:
        from_dict(cfg)
    assert shown in str(error.value) and "\n" not in str(error.value)


def test_the_full_config_reads_back() -> None:
    config = from_dict(full_dict())
    assert config.env.tasks == ("reach-v3", "push-v3") and config.balancer.name == "mtsac"


def test_seeded_balancers_draw_one_stream_per_loss() -> None:
    """RLW on both losses: the critic and the actor must not get the same random weights every update."""
    config = compose("balancer=rlw", "balancer.apply_to=[critic,actor]", "seed=5")
    built = build_balancers(config.balancer, 4, torch.device("cpu"))
    losses = torch.ones(4)
    built["critic"].weighted_loss(losses)
    built["actor"].weighted_loss(losses)
    assert not torch.equal(built["critic"].weights(), built["actor"].weights())
    twin = balancers.make("rlw", 4, seed=5)  # the critic keeps the configured seed
    twin.weighted_loss(losses)
    assert torch.equal(twin.weights(), built["critic"].weights())
