"""`experiment=<name>` presets: each composes to what its file says and trains on a two-task set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.config import CONFIG_DIR, compose
from mtrl_famo.trainer import Trainer

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# Small enough for a test; everything a preset sets that is not listed here keeps the preset's value.
TINY = [
    "env=custom",
    "env.tasks=[reach-v3,push-v3]",
    "agent.hidden_dim=16",
    "agent.num_layers=1",
    "agent.batch_size_per_task=8",
    "agent.warmup_steps=100",
    "agent.replay_size=2000",
    "steps=300",
    "eval.every=300",  # one evaluation, at the end: on 500-step episodes it costs more than the training
    "eval.episodes=2",
    "eval.background=false",  # no evaluation interpreter to start (tests/test_background_eval.py runs one)
    "device=cpu",
    "progress=false",
]
TINY_KEYS = {item.split("=", 1)[0] for item in TINY}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_value(config, dotted: str):
    """The TrainConfig value of a dotted config key (the schema's sections mirror the tree)."""
    value = config
    for key in dotted.split("."):
        value = getattr(value, key)
    return value


def test_the_presets_are_the_documented_ones() -> None:
    assert PRESETS == ["cagrad_paper", "metaworld_plus", "none", "smoke"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_to_what_its_file_says(name: str) -> None:
    written = flatten(yaml.safe_load((CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()))
    config = compose(f"experiment={name}", "env=mt10")
    assert config.experiment == name
    checked = 0
    for dotted, value in written.items():
        if dotted.startswith("hydra.") or dotted in ("experiment", "run_dir"):
            continue
        assert config_value(config, dotted) == value, dotted
        checked += 1
    assert checked >= (0 if name == "none" else 5)
    expected_dir = "runs/mt10/multihead/mtsac/seed=0" if name == "none" else f"runs/{name}/mt10/multihead/mtsac/seed=0"
    assert config.run_dir == expected_dir  # presets never share (or resume) each other's runs


@pytest.mark.parametrize("name", PRESETS)
def test_run_dir_and_sweep_subdir_have_the_same_levels(name: str) -> None:
    """A single run and a sweep's job lay out <experiment>/<env>/<network>/<balancer>/seed=<n> alike."""
    top = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    preset = yaml.safe_load((CONFIG_DIR / "experiment" / f"{name}.yaml").read_text())
    run_dir = preset.get("run_dir", top["run_dir"])
    subdir = preset.get("hydra", {}).get("sweep", {}).get("subdir", top["hydra"]["sweep"]["subdir"])
    assert run_dir == f"runs/{subdir}"
    levels = "${env.name}/${agent.network.name}/${balancer.name}/seed=${seed}"
    assert subdir == (levels if name == "none" else f"${{experiment}}/{levels}")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_a_few_hundred_steps_on_two_tasks(name: str, tmp_path: Path) -> None:
    config = compose(f"experiment={name}", *TINY, f"run_dir={tmp_path / name}")
    torch.manual_seed(0)
    trainer = Trainer(config)
    if name == "cagrad_paper":  # one head and one temperature: nothing has a task axis
        assert not [n for n, _ in trainer.agent.named_parameters() if is_task_specific(n)]
        assert trainer.agent.temperature.shape == (1,) and trainer.env.obs_dim == 39
    summary = trainer.train()
    assert summary["complete"] and summary["env_steps"] == 300
    assert set(summary["eval_success_rate_per_task"]) == {"reach-v3", "push-v3"}
    # Saved at the end only where the run ends on an episode boundary (the exact resume points).
    assert (tmp_path / name / "checkpoint.pt").exists() == (300 % config.env.max_episode_steps == 0)


def test_mt50_values_of_the_presets() -> None:
    assert compose("experiment=cagrad_paper", "env=mt50").agent.batch_size_per_task == 26  # 1300 in all
    assert compose("experiment=cagrad_paper", "env=mt10").agent.batch_size_per_task == 128  # 1280 in all
    assert compose("experiment=metaworld_plus", "env=mt50").eval.every == 4000
    assert compose("experiment=metaworld_plus", "env=mt10").eval.every == 20000
