"""Periodic resets (agent.reset_every, agent.reset): what a reset re-initialises, when the trainer resets,
and that a run resumed across a reset equals the straight run."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_network_runs import TINY, assert_same_tensors, full_state, state

from mtrl_famo import checkpoint
from mtrl_famo.build import build_agent, build_learner, build_replay
from mtrl_famo.config import compose
from mtrl_famo.learner import SACLearner

from tiny_setup import fill_with_random_transitions

K, OBS, ACT = 2, 41, 4


def learner_after_updates(*overrides: str, updates: int = 3) -> SACLearner:
    """A learner of the CLI's config that has stepped `updates` times (Adam state non-zero)."""
    config = compose(*TINY, *overrides, preflight=False)
    generator = torch.Generator().manual_seed(0)
    agent = build_agent(config.agent, OBS, ACT, K, torch.device("cpu"))
    learner = build_learner(config.agent, config.balancer, agent, generator)
    replay = build_replay(config.agent, K, OBS, ACT, torch.device("cpu"), generator)
    fill_with_random_transitions(replay, 8)
    for _ in range(updates):
        learner.update(replay.sample(4))
    return learner


def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@pytest.mark.parametrize("network", ["multihead", "moore"])
def test_a_reset_redraws_the_parts_in_place_and_zeroes_their_adam_state(network: str) -> None:
    learner = learner_after_updates(f"agent/network={network}", "agent.critic_layernorm=true", "agent.num_layers=2")
    agent = learner.agent
    before = tensors(agent)
    pointers = {name: p.data_ptr() for name, p in agent.named_parameters()}
    adam = {
        name: [v.data_ptr() for v in opt.state[p].values()]
        for name, opt in learner.optimizers.items()
        for p in opt.state
    }
    generator_state = learner.generator.get_state()
    # A fresh draw from the same generator state: what the reset must give.
    fresh = copy.deepcopy(agent)
    fresh.reset_parameters(["actor", "critic"], torch.Generator().set_state(generator_state))

    learner.reset(["actor", "critic"])

    after = tensors(agent)
    assert_same_tensors(after, tensors(fresh))  # the construction law, from the run's generator
    for name in after:
        if name.startswith(("actor.", "critic.")) and "norm" not in name:  # a LayerNorm restarts at 1 and 0
            assert not torch.equal(after[name], before[name]), name
    assert torch.equal(after["log_alpha"], before["log_alpha"])  # not listed: kept
    for target, online in zip(agent.critic_target.parameters(), agent.critic.parameters()):
        assert torch.equal(target, online)
    for name in ("actor", "critic"):
        assert all(not torch.any(v) for s in learner.optimizers[name].state.values() for v in s.values()), name
    assert any(torch.any(v) for s in learner.optimizers["alpha"].state.values() for v in s.values())
    # In place: the tensors a compiled update or a captured CUDA graph reads are the same ones.
    assert {name: p.data_ptr() for name, p in agent.named_parameters()} == pointers
    assert {
        name: [v.data_ptr() for v in opt.state[p].values()]
        for name, opt in learner.optimizers.items()
        for p in opt.state
    } == adam


def test_the_step_after_a_reset_is_a_fresh_learners_first() -> None:
    """After a reset, an update equals the same update of a learner built fresh around the reset weights
    (new Adam): zeroed moments and step counts are a fresh Adam's."""
    learner = learner_after_updates("balancer=famo")
    learner.reset(["actor", "critic", "temperature"])
    assert torch.equal(learner.agent.log_alpha, torch.zeros_like(learner.agent.log_alpha))  # init_temperature 1
    config = compose(*TINY, "balancer=famo", preflight=False)
    fresh = build_learner(config.agent, config.balancer, copy.deepcopy(learner.agent), torch.Generator())
    fresh.balancers = copy.deepcopy(learner.balancers)  # the balancer's state is kept by a reset
    fresh.num_updates = learner.num_updates
    batch_generator = torch.Generator().manual_seed(5)
    obs = torch.randn(K, 4, OBS, generator=batch_generator)
    from mtrl_famo.learner import PolicyNoise
    from mtrl_famo.replay import Batch

    batch = Batch(obs, torch.rand(K, 4, ACT, generator=batch_generator), torch.randn(K, 4), obs + 1, torch.zeros(K, 4))
    noise = PolicyNoise(
        torch.randn(K, 4, ACT, generator=batch_generator), torch.randn(K, 4, ACT, generator=batch_generator)
    )
    learner.update(batch, noise=noise)
    fresh.update(batch, noise=noise)
    assert_same_tensors(tensors(learner.agent), tensors(fresh.agent))


def test_reset_refuses_an_unknown_part() -> None:
    learner = learner_after_updates(updates=0)
    with pytest.raises(ValueError, match=r"Unknown part\(s\) bogus to reset; choose from actor, critic, temperature"):
        learner.reset(["bogus"])


def run(monkeypatch: pytest.MonkeyPatch, run_dir: Path, *overrides: str) -> list[int]:
    """The CLI in process; returns the steps at which the learner reset."""
    from mtrl_famo.train import cli
    from mtrl_famo.trainer import Trainer

    resets: list[int] = []
    original = Trainer.reset_due
    monkeypatch.setattr(
        Trainer, "reset_due", lambda self, step: ((due := original(self, step)) and resets.append(step)) or due
    )
    monkeypatch.setattr(sys, "argv", ["mtrl_famo.train", *TINY, *overrides, f"run_dir={run_dir}"])
    cli()
    return resets


RESETS = ["agent.reset_every=7", "balancer=famo"]  # warm-up 3, 20 steps: resets before the updates of 7 and 14


def test_a_run_resumed_across_a_reset_equals_the_straight_run(tmp_path: Path, monkeypatch) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(monkeypatch, straight, *RESETS) == [7, 14]
    # The checkpoint of step 10 (after the first reset, before the second), resumed to the end.
    resumed.mkdir()
    shutil.copy(straight / checkpoint.PREVIOUS, resumed / checkpoint.LATEST)
    shutil.copy(straight / state(straight, checkpoint.PREVIOUS)["replay_file"], resumed)
    assert run(monkeypatch, resumed, *RESETS) == [14]
    expected, got = full_state(straight), full_state(resumed)
    for part in ("agent", "learner", "replay", "rng"):
        assert_same_tensors(got[part], expected[part], part)


def test_resets_change_the_run(tmp_path: Path, monkeypatch) -> None:
    """The same run without resets ends with other weights (the reset is not a no-op)."""
    assert run(monkeypatch, tmp_path / "none", "steps=10", "balancer=famo") == []
    assert run(monkeypatch, tmp_path / "reset", "steps=10", "agent.reset_every=7", "balancer=famo") == [7]
    plain, reset = full_state(tmp_path / "none")["agent"], full_state(tmp_path / "reset")["agent"]
    assert not torch.equal(plain["actor.net.head_weight"], reset["actor.net.head_weight"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("agent/network=nope", "Unknown agent/network 'nope'; choose one of moore, multihead, paco, soft_modular."),
        ("agent.reset=[bogus]", "agent.reset names unknown 'bogus'; choose from actor, critic, temperature."),
        ("agent.reset_every=-5", "agent.reset_every=-5 is invalid; it must be a non-negative integer (0 = no resets)."),
        ("agent.reset=[] agent.reset_every=10", "agent.reset=[] with agent.reset_every=10 would reset nothing"),
        ("agent.critic_hidden_dim=0", "agent.critic_hidden_dim=0 is invalid; it must be a positive integer."),
        ("agent/network=moore agent.network.num_experts=0", "agent.network.num_experts=0 is invalid"),
    ],
)
def test_bad_values_are_one_sentence(override: str, message: str, tmp_path: Path, monkeypatch, capsys) -> None:
    from mtrl_famo.train import cli

    monkeypatch.setattr(sys, "argv", ["mtrl_famo.train", *TINY, *override.split(), f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as stopped:
        cli()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
