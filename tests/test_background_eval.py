"""Background evaluation (`eval.background=true`): the same figures as a blocking evaluation of the
same policy snapshot, logged at the same steps, exact across a checkpoint; failures surface.

Every expectation comes from the blocking `Evaluator` (the `eval.background=false` path), run here
in this process on a copy of the policy the test took itself.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from mtrl_famo import background_eval, checkpoint
from mtrl_famo.background_eval import BackgroundEvalError, BackgroundEvaluator
from mtrl_famo.build import build_agent
from mtrl_famo.config import ConfigError, compose
from mtrl_famo.envs import EvalResult
from mtrl_famo.evaluator import Evaluator
from mtrl_famo.trainer import Trainer

from conftest import tb_scalars

CPU = torch.device("cpu")
RUN = [
    "env=custom",
    "env.tasks=[reach-v3,push-v3]",
    "env.max_episode_steps=10",
    "agent.hidden_dim=16",
    "agent.num_layers=1",
    "agent.batch_size_per_task=4",
    "agent.warmup_steps=10",
    "agent.replay_size=1000",
    "balancer=mtsac",
    "eval.every=10",
    "log.every=10",
    "progress=false",
    "device=cpu",
]


def tiny_agent(*overrides: str):
    config = compose(*RUN, *overrides)
    obs_dim, action_dim = config.env.dims()
    torch.manual_seed(3)
    return config, build_agent(config.agent, obs_dim, action_dim, 2, CPU)


def assert_same(got: EvalResult, expected: EvalResult) -> None:
    assert got.task_names == expected.task_names
    np.testing.assert_array_equal(got.success_rate, expected.success_rate)
    np.testing.assert_array_equal(got.mean_return, expected.mean_return)


def worker_gone(process: multiprocessing.process.BaseProcess) -> bool:
    """Ended and reaped: no zombie left in the process table."""
    return process.exitcode is not None and not Path(f"/proc/{process.pid}").exists()


@pytest.mark.parametrize("protocol", ["any_success", "metaworld"])
def test_result_is_the_blocking_evaluation_of_the_snapshot_taken_at_submit(protocol: str) -> None:
    """Two evaluations in a row, the actor changed in place right after each submit (as training
    would change it): each result equals the blocking evaluation of the weights at submit time, and
    the second continues the eval env's goal sequence exactly like the blocking evaluator's. (The
    change matters: returns differ in the third decimal when the worker is given the changed weights.)"""
    config, agent = tiny_agent(f"eval.protocol={protocol}", "eval.episodes=2")
    background = BackgroundEvaluator(config.env, config.seed, 2, agent.actor, protocol=protocol)
    snapshots = []
    try:
        for step in (10, 20):
            snapshots.append(copy.deepcopy(agent))
            background.submit(step)
            with torch.no_grad():
                for parameter in agent.actor.parameters():
                    parameter.add_(0.5)  # "training" goes on while the worker evaluates
        finished = background.collect(wait=True)
        process = background._process
    finally:
        background.close()
    blocking = Evaluator(config.env, config.seed, 2, snapshots[0], CPU, protocol=protocol)
    try:
        first = blocking.run()
        blocking.agent = snapshots[1]
        second = blocking.run()
    finally:
        blocking.close()
    assert [step for step, _ in finished] == [10, 20]
    assert_same(finished[0][1], first)
    assert_same(finished[1][1], second)
    assert background.last is finished[1][1]
    assert worker_gone(process)


# Metaworld's protocol: its goal shuffle is eval env RNG state that a checkpoint must carry.
TRAIN = ["eval.protocol=metaworld", "eval.episodes=2", "steps=30", "checkpoint.every=20"]


def train(run_dir: Path, *overrides: str) -> dict:
    return Trainer(compose(*RUN, *TRAIN, f"run_dir={run_dir}", *overrides)).train()


@pytest.fixture(scope="module")
def blocking_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: 30 steps with blocking evaluation."""
    run_dir = tmp_path_factory.mktemp("blocking") / "run"
    train(run_dir, "eval.background=false")
    return run_dir


@pytest.fixture(scope="module")
def background_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run with background evaluation (the default), checkpointed at 20 and 30."""
    run_dir = tmp_path_factory.mktemp("background") / "run"
    train(run_dir)
    assert not multiprocessing.active_children()
    return run_dir


def assert_same_run(reference: Path, run_dir: Path) -> None:
    expected, got = tb_scalars(reference, ("eval/",)), tb_scalars(run_dir, ("eval/",))
    assert [step for step, _ in expected["eval/success_rate"]] == [10, 20, 30]
    assert got == expected
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads((reference / "summary.json").read_text())
    assert summary["complete"] and summary["eval_success_rate"] is not None


def test_background_run_logs_what_the_blocking_run_logs(blocking_run: Path, background_run: Path) -> None:
    assert_same_run(blocking_run, background_run)


def test_checkpoint_and_resume_with_background_evaluation_match_the_straight_run(
    blocking_run: Path, background_run: Path, tmp_path: Path
) -> None:
    """The background run as if killed right after its checkpoint at 20 (taken after the evaluation
    at 20), resumed to 30: the new worker must start from the checkpoint's eval env RNG to evaluate
    at 30 what the straight run did."""
    run_dir = tmp_path / "run"
    shutil.copytree(background_run, run_dir)
    (run_dir / checkpoint.PREVIOUS).replace(run_dir / checkpoint.LATEST)
    (run_dir / "summary.json").unlink()
    assert torch.load(run_dir / checkpoint.LATEST, weights_only=False)["collector"]["env_step"] == 20
    train(run_dir)
    assert_same_run(blocking_run, run_dir)


def test_checkpoint_state_survives_a_worker_that_never_started() -> None:
    """Resumed, then checkpointed again before the next evaluation: the saved eval env RNG is the one
    loaded, not None (which would restart the goal sequence)."""
    config, agent = tiny_agent()
    evaluator = BackgroundEvaluator(config.env, config.seed, 1, agent.actor, protocol="metaworld")
    state = {"env_rng": [(0, {"marker": 1}), (1, {"marker": 2})], "last": None}
    evaluator.load_state_dict(state)
    assert evaluator.state_dict() == state
    evaluator.close()
    evaluator.close()


def test_worker_exception_is_one_error_here_and_nothing_is_left_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    config, agent = tiny_agent()
    evaluator = BackgroundEvaluator(config.env, config.seed, 1, agent.actor, protocol="any_success")
    monkeypatch.setattr(background_eval, "snapshot", lambda actor: {"no_such_weight": np.zeros(1)})
    evaluator.submit(10)
    process = evaluator._process
    with pytest.raises(BackgroundEvalError, match=r"failed in its worker process: RuntimeError: .*no_such_weight"):
        evaluator.collect(wait=True)
    assert worker_gone(process)
    with pytest.raises(BackgroundEvalError, match="failed in its worker process"):
        evaluator.submit(20)  # the same error again, not a hang
    evaluator.close()
    evaluator.close()


def test_worker_killed_is_one_error_here_not_a_hang() -> None:
    config, agent = tiny_agent()
    evaluator = BackgroundEvaluator(config.env, config.seed, 1, agent.actor, protocol="any_success")
    evaluator.submit(10)
    process = evaluator._process
    os.kill(process.pid, signal.SIGKILL)  # as the kernel's OOM killer would, while it works
    with pytest.raises(BackgroundEvalError, match=r"died with exit code -9"):
        evaluator.collect(wait=True)
    assert worker_gone(process)
    evaluator.close()
    evaluator.close()


def test_eval_background_must_be_a_boolean() -> None:
    assert compose(*RUN).eval.background is True  # configs/config.yaml's default
    with pytest.raises(ConfigError, match=r"eval.background='sometimes' is invalid; it must be true or false"):
        compose(*RUN, "eval.background=sometimes")
