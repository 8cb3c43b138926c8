"""loop.overlap: updates run while the env workers step, and only the replay they sample differs.

- overlap=false is the sequential loop (act, step, store, update), checked against that loop
  written out here by hand from the components, and with workers against sync envs;
- overlap=true samples a replay without the transition in flight, draws the same generator in
  the same order, and a run resumed from its checkpoint ends exactly like the straight run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtrl_famo.config import compose
from mtrl_famo.trainer import Trainer

from conftest import DETERMINISTIC_TAGS, tb_scalars

HORIZON, WARMUP, STEPS = 4, 3, 12
TINY = [
    "env=custom",
    "env.tasks=[reach-v3,push-v3]",
    f"env.max_episode_steps={HORIZON}",
    "agent.hidden_dim=16",
    "agent.num_layers=1",
    "agent.batch_size_per_task=4",
    f"agent.warmup_steps={WARMUP}",
    "agent.replay_size=100",
    "agent.updates_per_step=2",
    "balancer=famo",
    "device=cpu",
    "progress=false",
    "eval.episodes=1",
    "log.every=4",
    "log.conflicts_every=1",
]


def trainer(tmp_path: Path, *overrides: str) -> Trainer:
    return Trainer(compose(*TINY, f"steps={STEPS}", f"eval.every={STEPS}", f"run_dir={tmp_path}", *overrides))


def run_steps(trainer: Trainer, steps: int) -> dict[str, torch.Tensor]:
    """`steps` trainer steps; the agent's parameters after them."""
    try:
        for _ in range(steps):
            trainer.step()
        return {name: value.clone() for name, value in trainer.agent.state_dict().items()}
    finally:
        trainer.env.close()


def assert_same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], same: bool = True) -> None:
    equal = all(torch.equal(a[name], b[name]) for name in a)
    assert equal == same, "parameters differ" if same else "parameters are identical"


def test_sequential_loop_is_act_step_store_update(tmp_path: Path) -> None:
    """overlap=false equals the pre-overlap loop written out by hand, and its sync twin."""
    reference = trainer(tmp_path / "by-hand", "loop.overlap=false", "env.vector_strategy=sync")
    try:
        for _ in range(STEPS):
            reference.collector.step()
            if reference.env_step > WARMUP:
                for _ in range(reference.config.agent.updates_per_step):
                    batch = reference.replay.sample(reference.config.agent.batch_size_per_task)
                    reference.learner.update(batch, True)
        expected = {name: value.clone() for name, value in reference.agent.state_dict().items()}
    finally:
        reference.env.close()
    sequential = run_steps(trainer(tmp_path / "workers", "loop.overlap=false", "env.workers=2"), STEPS)
    assert_same_parameters(sequential, expected)
    overlapped = run_steps(trainer(tmp_path / "overlap", "loop.overlap=true", "env.workers=2"), STEPS)
    assert_same_parameters(overlapped, expected, same=False)  # its updates saw other replays


@pytest.mark.parametrize("overlap", [False, True])
def test_updates_sample_the_replay_of_their_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool):
    """Step t's updates see t transitions sequentially, t-1 overlapped; warm-up steps never update."""
    run = trainer(tmp_path, f"loop.overlap={str(overlap).lower()}", "env.workers=1")
    seen: list[tuple[int, int]] = []
    step = 0
    sample = run.replay.sample
    monkeypatch.setattr(run.replay, "sample", lambda b: seen.append((step, run.replay.size)) or sample(b))
    try:
        for step in range(1, 7):  # noqa: B007 (read by the spy)
            run.step()
    finally:
        run.env.close()
    lag = 1 if overlap else 0
    assert seen == [(t, t - lag) for t in range(WARMUP + 1, 7) for _ in range(2)]


def test_overlapped_run_resumed_from_checkpoint_equals_straight_run(tmp_path: Path) -> None:
    """A finished overlapped run re-launched with more steps continues from its checkpoint (taken at
    an episode end, after the step's updates and store) exactly like the run given them at once."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # Evaluation in process: the default background worker would cost an interpreter start per run,
    # and comparable_config ignores it (tests/test_background_eval.py checks it evaluates the same).
    common = ("loop.overlap=true", "env.workers=2", "checkpoint.every=4", "eval.every=8", "eval.background=false")
    Trainer(compose(*TINY, *common, "steps=12", f"run_dir={straight}")).train()
    first = Trainer(compose(*TINY, *common, "steps=8", f"run_dir={resumed}")).train()
    assert first["env_steps"] == 8
    Trainer(compose(*TINY, *common, "steps=12", f"run_dir={resumed}")).train()
    expected, got = tb_scalars(straight, DETERMINISTIC_TAGS), tb_scalars(resumed, DETERMINISTIC_TAGS)
    assert {"loss/critic", "loss/actor", "eval/return"} <= set(expected)
    assert got == expected
