"""Every network of agents/registry.py trains through the real CLI entry (in process) with FAMO and with
PCGrad on two tasks, resumes exactly from a checkpoint, and is evaluated by `python -m mtrl_famo.evaluate`;
the critic options reach the agent the run trains. (Multi-head runs: tests/test_cli.py, test_resume.py.)"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtrl_famo import checkpoint
from mtrl_famo.agents.registry import NETWORKS

from conftest import DETERMINISTIC_TAGS, tb_scalars
from tiny_setup import tiny_agent

# Two tasks, 5-step episodes, a tiny agent: 20 steps per task, a checkpoint at every 10.
TINY = [
    "env=custom",
    "env.tasks=[reach-v3,push-v3]",
    "env.max_episode_steps=5",
    "env.vector_strategy=sync",
    "agent.hidden_dim=8",
    "agent.num_layers=1",
    "agent.batch_size_per_task=4",
    "agent.warmup_steps=3",
    "agent.replay_size=200",
    "device=cpu",
    "steps=20",
    "eval.every=10",
    "eval.episodes=1",
    "eval.background=false",
    "log.every=5",
    "log.conflicts_every=2",
    "checkpoint.every=10",
    "progress=false",
]
OTHERS = sorted(set(NETWORKS) - {"multihead"})
# Small options, so the runs stay cheap (their published sizes: configs/agent/network/).
SMALL = {
    "moore": ["agent.network.num_experts=2"],
    "soft_modular": ["agent.network.embedding_dim=8", "agent.network.routing_width=8"],
    "paco": ["agent.network.num_parameter_sets=2"],
}
# MOORE's run also has a LayerNorm critic 12 wide (2 layers: the LayerNorm sits after every hidden linear but the last).
CRITIC_OPTIONS = {"moore": ["agent.num_layers=2", "agent.critic_layernorm=true", "agent.critic_hidden_dim=12"]}


def train_cli(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> None:
    """`python -m mtrl_famo.train <overrides>`, in this process."""
    from mtrl_famo.train import cli

    monkeypatch.setattr(sys, "argv", ["mtrl_famo.train", *TINY, *overrides])
    cli()


def state(run_dir: Path, name: str = checkpoint.LATEST) -> dict:
    """A checkpoint file's state (without its replay)."""
    return torch.load(run_dir / name, map_location="cpu", weights_only=False)


def full_state(run_dir: Path) -> dict:
    """The latest checkpoint with its replay, as a resume reads it."""
    return checkpoint.load_latest(run_dir, map_location="cpu")


def copy_previous_checkpoint(run_dir: Path, into: Path) -> None:
    """`run_dir`'s previous checkpoint (and its replay file) as the latest of a fresh run directory `into`."""
    into.mkdir()
    shutil.copy(run_dir / checkpoint.PREVIOUS, into / checkpoint.LATEST)
    shutil.copy(run_dir / state(run_dir, checkpoint.PREVIOUS)["replay_file"], into)


def assert_same_tensors(got, expected, where: str = "") -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), where
    elif isinstance(expected, np.ndarray):
        assert np.array_equal(got, expected), where
    elif isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key in expected:
            assert_same_tensors(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same_tensors(a, b, f"{where}[{index}]")
    else:
        assert got == expected, where


@pytest.fixture(scope="module")
def famo_runs(tmp_path_factory: pytest.TempPathFactory):
    """network -> the run dir of its straight FAMO run (critic LayerNorm on and a critic width of 12 for MOORE)."""
    runs: dict[str, Path] = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for network in OTHERS:
            run_dir = tmp_path_factory.mktemp(network) / "famo"
            options = [f"agent/network={network}", *SMALL[network], *CRITIC_OPTIONS.get(network, [])]
            train_cli(monkeypatch, *options, "balancer=famo", f"run_dir={run_dir}")
            runs[network] = run_dir
    return runs


@pytest.mark.parametrize("network", OTHERS)
def test_network_trains_with_famo_and_resumes_exactly(network: str, famo_runs, tmp_path: Path, monkeypatch) -> None:
    """The straight run's checkpoint of step 10 (kept as checkpoint.prev.pt), resumed to step 20, ends with
    the straight run's weights, optimiser and balancer state, and logs its scalars from step 11 on."""
    straight = famo_runs[network]
    saved = state(straight)
    assert saved["collector"]["env_step"] == 20
    assert state(straight, checkpoint.PREVIOUS)["collector"]["env_step"] == 10
    losses = tb_scalars(straight, ("loss/",))
    assert losses["loss/critic"] and all(torch.isfinite(torch.tensor([v for _, v in losses["loss/critic"]])))

    resumed = tmp_path / "resumed"
    copy_previous_checkpoint(straight, resumed)
    options = [f"agent/network={network}", *SMALL[network], *CRITIC_OPTIONS.get(network, [])]
    train_cli(monkeypatch, *options, "balancer=famo", f"run_dir={resumed}")

    saved, final = full_state(straight), full_state(resumed)
    for part in ("agent", "learner", "replay", "rng"):
        assert_same_tensors(final[part], saved[part], part)
    expected, got = tb_scalars(straight, DETERMINISTIC_TAGS), tb_scalars(resumed, DETERMINISTIC_TAGS)
    assert set(got) == set(expected)
    for tag, points in expected.items():
        assert got[tag] == [point for point in points if point[0] > 10], tag


@pytest.mark.parametrize("network", OTHERS)
def test_network_trains_with_pcgrad(network: str, tmp_path: Path, monkeypatch) -> None:
    train_cli(
        monkeypatch, f"agent/network={network}", *SMALL[network], "balancer=pcgrad", "steps=10", f"run_dir={tmp_path}"
    )
    scalars = tb_scalars(tmp_path, ("loss/", "balancer/"))
    assert scalars["loss/critic"] and "balancer/grad_cosine_min" in scalars  # PCGrad saw per-task gradients
    assert state(tmp_path)["collector"]["env_step"] == 10


def test_run_trains_the_configured_network_and_critic_options(famo_runs) -> None:
    """The checkpoint fits, strictly, an agent built by hand with MOORE, a LayerNorm critic of width 12 and
    an actor of width 8 without LayerNorm: the CLI's config reached the agent (build_agent passes every option)."""
    agent = tiny_agent(
        torch.float32,
        obs_dim=41,  # 39 + the 2-task one-hot
        action_dim=4,
        num_tasks=2,
        network="moore",
        network_options={"num_experts": 2},
        critic_hidden_dim=12,
        critic_layernorm=True,
    )
    weights = state(famo_runs["moore"])["agent"]
    agent.load_state_dict(weights)  # strict: same names, same shapes
    assert type(agent.actor.net) is NETWORKS["moore"] and type(agent.critic.q1) is NETWORKS["moore"]
    assert any(isinstance(module, torch.nn.LayerNorm) for module in agent.critic.modules())
    assert not any(isinstance(module, torch.nn.LayerNorm) for module in agent.actor.modules())


def test_evaluate_a_moore_run(famo_runs, capsys) -> None:
    """`python -m mtrl_famo.evaluate` builds the run's network from its config.yaml; changing one of the
    network's options (a shape key) is refused in one sentence."""
    from mtrl_famo.evaluate import cli

    run_dir = famo_runs["moore"]
    assert cli([str(run_dir), "eval.episodes=1", "device=cpu", "--json"]) == 0
    assert '"env_step": 20' in capsys.readouterr().out
    assert cli([str(run_dir), "agent.network.num_experts=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "agent.network.num_experts=3 would not fit the agent in the checkpoint" in err
    assert len(err.splitlines()) == 1
