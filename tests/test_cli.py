"""End to end through the real CLI: TensorBoard files, determinism, bad-input errors."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_RUN, run_cli, tb_scalars
from mtrl_famo.train import cli


@pytest.fixture(scope="module")
def tiny_run(tiny_cli_run):
    cwd, result = tiny_cli_run("famo")
    return cwd / "runs" / "custom" / "famo" / "seed=0", result


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


def test_default_run_dir_is_deterministic(tiny_cli_run):
    cwd, result = tiny_cli_run("mtsac")  # no run_dir given: runs/<env>/<balancer>/seed=<n>
    assert sorted(str(p.relative_to(cwd)) for p in cwd.glob("runs/*/*/*")) == ["runs/custom/mtsac/seed=0"]
    assert (cwd / "runs" / "custom" / "mtsac" / "seed=0" / "summary.json").exists()
    assert "run dir runs/custom/mtsac/seed=0" in result.stdout


def test_same_seed_same_losses(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    again = tmp_path / "again"
    result = run_cli(*TINY_RUN, "balancer=famo", f"run_dir={again}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = tb_scalars(run_dir), tb_scalars(again)
    for tag in ("loss/critic", "loss/actor", "eval/return"):
        assert first[tag] == second[tag], tag


BAD_INPUT = [
    ("env=mt11", "Unknown env 'mt11'; choose one of custom, mt1, mt10, mt50"),
    ("balancer=adam", "Unknown balancer 'adam'; choose one of cagrad, famo, mtsac, pcgrad"),
    ("env.tasks=[reach-v3,jump-v3]", "Unknown Metaworld task 'jump-v3'"),
    ("steps=0", "steps=0 is invalid"),
    ("agent.batch_size_per_task=-4", "agent.batch_size_per_task=-4 is invalid"),
    ("eval.every=500", "eval.every=500 is larger than steps=120"),
    ("balancer=cagrad balancer.options.c=-1", "CAGrad c must be non-negative, got -1"),
]


def assert_one_sentence(message: str, fragment: str) -> None:
    message = message.strip()
    assert fragment in message
    assert len(message.splitlines()) == 1 and "Traceback" not in message


@pytest.mark.parametrize("override, fragment", BAD_INPUT)
def test_bad_input_is_one_clear_sentence(override, fragment, tmp_path, monkeypatch, capsys):
    """In process, through the same entry point as `python -m mtrl_famo.train` (fast)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["mtrl_famo.train", *TINY_RUN, *override.split(), f"run_dir={tmp_path / 'bad'}"])
    with pytest.raises(SystemExit) as stopped:
        cli()
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert_one_sentence(captured.err, fragment)
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []  # no run dir, no Hydra outputs


def test_bad_input_through_a_real_subprocess(tmp_path):
    """One case end to end as a user sees it: exit status 2, one line on stderr, nothing written."""
    override, fragment = BAD_INPUT[0]
    result = run_cli(*TINY_RUN, override, f"run_dir={tmp_path / 'bad'}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert_one_sentence(result.stderr, fragment)
    assert list(tmp_path.iterdir()) == []
