"""The config schema: nested sections mirroring the YAML tree, key roles as field metadata, choices from
the type hints, no torch or gymnasium on import, and the machine checks left to mtrl_famo.preflight."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from mtrl_famo import config as schema
from mtrl_famo import preflight
from mtrl_famo.config import ConfigError, compose, keys_with_role

TWO_TASKS = ("env=custom", "env.tasks=[reach-v3,push-v3]")

# The lists as they were written by hand before the roles became field metadata (written out here, so
# a role dropped from or added to a field fails a test).
RESUMABLE = {
    "steps",
    "progress",
    "device",
    "run_dir",
    "checkpoint.every",
    "eval.background",
    "agent.compile",
    "agent.cuda_graph",
    "env.vector_strategy",
    "env.workers",
    "eval.video",
    "video",
    "wandb",
}
SHAPE = {
    "env.name",
    "env.task",
    "env.tasks",
    "env.one_hot",
    "agent.heads",
    "agent.alpha",
    "agent.hidden_dim",
    "agent.num_layers",
    "agent.critic_hidden_dim",
    "agent.critic_layernorm",
    "agent.network",
}
PROTOCOL = {
    "eval.protocol",
    "eval.episodes",
    "eval.every",
    "env.max_episode_steps",
    "env.goals",
    "env.reward_version",
    "env.reward_normalization",
    "agent.heads",
    "agent.alpha",
    "agent.critic_layernorm",
    "agent.reset_every",
    "agent.reset",
    "agent.network",
}


def test_importing_the_schema_or_the_report_imports_neither_torch_nor_gymnasium() -> None:
    """The schema, and the report CLI (it reads event files and configs: `python -m mtrl_famo.report`
    answers a bad sweep directory before a training stack would have loaded), each in a fresh interpreter."""
    code = (
        "import importlib, sys\n"
        "importlib.import_module(sys.argv[1])\n"
        "heavy = sorted(name for name in ('torch', 'gymnasium', 'metaworld') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    for module in ("mtrl_famo.config", "mtrl_famo.report"):
        result = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (module, result.stderr)


@pytest.mark.parametrize("role, expected", [("resumable", RESUMABLE), ("shape", SHAPE), ("protocol", PROTOCOL)])
def test_each_derived_key_list_is_the_one_written_by_hand(role: str, expected: set[str]) -> None:
    keys = keys_with_role(role)
    assert len(keys) == len(set(keys)) and set(keys) == expected


def test_the_trainer_evaluation_and_report_use_the_derived_lists() -> None:
    from mtrl_famo import evaluate, report, trainer

    assert keys_with_role("resumable") == trainer.RESUMABLE_CHANGES
    assert keys_with_role("shape") == evaluate.SHAPE_KEYS
    assert keys_with_role("protocol") == report.PROTOCOL_KEYS
    with pytest.raises(ValueError, match="Unknown role 'speed'"):
        keys_with_role("speed")  # type: ignore[arg-type]


def test_the_torch_free_choices_are_those_of_the_implementations() -> None:
    from mtrl_famo import balancers
    from mtrl_famo.envs.builder import VECTORIZERS
    from mtrl_famo.envs.evaluation import PROTOCOLS

    assert schema.BALANCER_NAMES == balancers.NAMES  # configs/balancer/*.yaml and the registry
    from mtrl_famo.agents.registry import NETWORKS, network_options
    from mtrl_famo.agents.sac import RESETTABLE_PARTS

    assert tuple(sorted(NETWORKS)) == schema.NETWORK_NAMES  # configs/agent/network/*.yaml and the registry
    for name in NETWORKS:  # a network's file has exactly its constructor's options
        assert set(schema.network_option_defaults(name)) == set(network_options(name)), name
    assert set(schema.RESET_PARTS) == {*RESETTABLE_PARTS, "temperature"}  # the learner resets the temperature
    assert tuple(PROTOCOLS) == schema.EVAL_PROTOCOLS
    assert tuple(VECTORIZERS) == schema.VECTOR_STRATEGIES


def test_asdict_has_the_shape_of_the_config_tree() -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(schema.CONFIG_DIR), version_base="1.3"):
        tree = OmegaConf.to_container(hydra_compose(config_name="config", overrides=["env=mt1"]), resolve=True)
    tree.pop("hydra", None)
    config = schema.from_dict(tree)
    values = dataclasses.asdict(config)

    def shape(node: object) -> object:
        return {key: shape(value) for key, value in node.items()} if isinstance(node, dict) else None

    tree["env"].pop("task")  # an extra key of env=mt1, read into env.tasks
    assert shape({**values, "balancer": {**values["balancer"], "options": None}}) == shape(
        {**tree, "balancer": {**tree["balancer"], "options": None}}
    )
    assert (config.eval.every, config.log.every, config.checkpoint.every) == (
        tree["eval"]["every"],
        tree["log"]["every"],
        tree["checkpoint"]["every"],
    )
    assert config.loop.overlap is tree["loop"]["overlap"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("agent.heads=x", "Unknown agent.heads 'x'; choose one of per_task, shared."),
        ("agent.alpha=both", "Unknown agent.alpha 'both'; choose one of per_task, shared."),
        ("agent.init=normal", "Unknown agent.init 'normal'; choose one of pytorch, xavier."),
        ("eval.protocol=best", "Unknown eval.protocol 'best'; choose one of any_success, metaworld."),
        ("env.vector_strategy=threads", "Unknown env.vector_strategy 'threads'; choose one of sync, async, workers."),
        ("env.goals=one", "Unknown env.goals 'one'; choose one of random, fixed."),
        ("balancer.name=adam", "Unknown balancer 'adam'; choose one of aligned_mtl, cagrad,"),
        ("balancer.apply_to=[critic,alpha]", "balancer.apply_to names unknown 'alpha'; choose from critic, actor."),
        ("video.camera=side", "Unknown video.camera 'side'; choose one of corner, corner2"),
        ("agent.compile=maybe", "agent.compile='maybe' is invalid; it must be true or false or auto."),
    ],
)
def test_a_bad_choice_is_one_sentence_from_the_type_hint(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        compose(*TWO_TASKS, override, preflight=False)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def test_the_schema_asks_the_machine_nothing_and_the_preflight_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = compose(*TWO_TASKS, "device=cuda", "balancer=cagrad", "balancer.options.c=-1", preflight=False)
    with pytest.raises(ConfigError, match="no usable CUDA device"):
        preflight.check(config)
    with pytest.raises(ConfigError, match="CAGrad c must be non-negative"):
        preflight.check(dataclasses.replace(config, device="cpu"))
    with pytest.raises(ConfigError, match="no usable CUDA device"):
        compose(*TWO_TASKS, "device=cuda")  # compose runs the pre-flight unless told not to


def test_comparable_config_drops_exactly_the_resumable_keys() -> None:
    from mtrl_famo.trainer import comparable_config

    nested = dataclasses.asdict(compose(*TWO_TASKS, preflight=False))
    comparable = comparable_config(nested)
    assert "video" not in comparable and "wandb" not in comparable and "steps" not in comparable
    assert "compile" not in comparable["agent"] and "background" not in comparable["eval"]
    assert comparable["eval"]["episodes"] == nested["eval"]["episodes"]
    changed = {**nested, "eval": {**nested["eval"], "episodes": nested["eval"]["episodes"] + 1}}
    assert comparable_config(changed) != comparable
    resumable = {**nested, "steps": nested["steps"] + 1, "agent": {**nested["agent"], "compile": True}}
    assert comparable_config(resumable) == comparable
