"""End to end through the real CLI: TensorBoard files, determinism, bad-input errors."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_RUN, run_cli, tb_scalars



@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "famo"
    result = run_cli(*TINY_RUN, "balancer=famo", "seed=3", f"run_dir={run_dir}", cwd=tmp_path_factory.mktemp("cwd"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_run_writes_tensorboard_with_success_tags(tiny_run):
    run_dir, _ = tiny_run
    data = tb_scalars(run_dir)
    assert [step for step, _ in data["eval/success_rate"]] == [60, 120]
    for task in ("reach-v3", "push-v3"):
        assert [step for step, _ in data[f"eval/success_rate/{task}"]] == [60, 120]
        assert f"eval/return/{task}" in data and f"alpha/{task}" in data
        assert f"balancer/weight/{task}" in data
    for tag in ("train/success_rate", "loss/critic", "loss/actor", "loss/alpha", "perf/env_steps_per_s", "perf/update_ms"):
        assert tag in data, tag
    assert [step for step, _ in data["loss/critic"]] == [60, 80, 100, 120]  # learning starts after warm-up
    assert all(0.0 <= value <= 1.0 for _, value in data["eval/success_rate"])


def test_run_saves_resolved_config_and_summary(tiny_run):
    run_dir, _ = tiny_run
    config = (run_dir / "config.yaml").read_text()
    assert "name: famo" in config and "${" not in config
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 120 and summary["complete"]


def test_default_run_dir_is_deterministic(tmp_path):
    overrides = [o for o in TINY_RUN if not o.startswith(("steps", "eval.every"))]
    result = run_cli(*overrides, "steps=10", "eval.every=10", "agent.warmup_steps=5", "seed=7", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / "custom" / "mtsac" / "seed=7" / "summary.json").exists()


def test_same_seed_same_losses(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    again = tmp_path / "again"
    result = run_cli(*TINY_RUN, "balancer=famo", "seed=3", f"run_dir={again}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = tb_scalars(run_dir), tb_scalars(again)
    for tag in ("loss/critic", "loss/actor", "eval/return"):
        assert first[tag] == second[tag], tag


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("env=mt11", "Unknown env 'mt11'; choose one of custom, mt1, mt10, mt50"),
        ("balancer=adam", "Unknown balancer 'adam'; choose one of cagrad, famo, mtsac, pcgrad"),
        ("env.tasks=[reach-v3,jump-v3]", "Unknown Metaworld task 'jump-v3'"),
        ("steps=0", "steps=0 is invalid"),
        ("agent.batch_size_per_task=-4", "agent.batch_size_per_task=-4 is invalid"),
        ("eval.every=500", "eval.every=500 is larger than steps=120"),
        ("balancer=cagrad balancer.options.c=-1", "CAGrad c must be non-negative, got -1"),
    ],
)
def test_bad_input_is_one_clear_sentence(override, fragment, tmp_path):
    result = run_cli(*TINY_RUN, *override.split(), f"run_dir={tmp_path / 'bad'}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert fragment in message
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert not (tmp_path / "bad").exists()
