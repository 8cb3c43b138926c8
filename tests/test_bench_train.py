"""scripts/bench_train.py runs the real training loop and prints the issue's keys; the other new benchmarks run."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO, run_script

KEYS = {"env", "balancer", "device", "compile", "steps_per_s", "env_ms", "update_ms", "other_ms"}


@pytest.mark.slow
def test_bench_train_times_the_real_loop_and_prints_one_object_per_configuration() -> None:
    result = run_script(
        "bench_train.py",
        *("--env", "mt1", "--balancer", "mtsac", "famo", "--overlap", "false", "true"),
        *("--steps", "4", "--warmup", "6", "--skip", "1", "--threads", "1", "--json", "--"),
        *("env.task=reach-v3", "env.max_episode_steps=5", "agent.hidden_dim=16", "agent.num_layers=1"),
        *("agent.batch_size_per_task=4", "env.workers=1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(row["balancer"], row["overlap"]) for row in rows] == [
        ("mtsac", False),
        ("mtsac", True),
        ("famo", False),
        ("famo", True),
    ]
    for row in rows:
        assert set(row) >= KEYS and row["env"] == "mt1" and row["device"] == "cpu" and row["compile"] is False
        assert row["update"] == "eager" and row["verdicts"] == {"compiled": "off", "graph": "off"}
        assert row["steps"] == 4 and row["steps_per_s"] > 0 and row["env_ms"] > 0 and row["update_ms"] > 0
        # The split adds up to the measured iteration (other = the rest, never much below zero).
        assert abs(1e3 / row["steps_per_s"] - (row["env_ms"] + row["update_ms"] + row["other_ms"])) < 0.1


@pytest.mark.slow
def test_bench_train_refuses_a_bad_override_in_one_line() -> None:
    result = run_script("bench_train.py", "--steps", "2", "--", "env.vector_strategy=threads")
    assert result.returncode == 2
    assert "env.vector_strategy" in result.stderr and "threads" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_gram_solve_times_every_gram_balancer() -> None:
    result = run_script("bench_gram_solve.py", "--tasks", "3", "--calls", "2", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {row["balancer"] for row in rows} >= {"cagrad", "pcgrad", "nashmtl"}
    assert all(row["ms_per_call"] > 0 for row in rows)
    assert {row["balancer"]: row["host"] for row in rows}["pcgrad"] is False


def test_bench_matmul_floor_counts_the_updates_matmuls() -> None:
    result = run_script("bench_matmul_floor.py", "--rows", "8", "--width", "4", "--repeats", "1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout)
    assert row["matmuls"] == 32 and row["ms"] > 0


def test_gpu_acceptance_refuses_a_machine_without_cuda_in_one_sentence(capsys, monkeypatch) -> None:
    """scripts/gpu_acceptance.py runs only on a GPU (tests/test_cuda.py and the rest of it run there);
    here: its argument check (in process) and, as a user runs it, its one sentence without CUDA."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import gpu_acceptance

    with pytest.raises(SystemExit) as bad:
        gpu_acceptance.parse(["--budget", "0"])
    assert bad.value.code == 2
    assert capsys.readouterr().err == "error: --budget must be a positive number of seconds, got 0.0.\n"
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-CUDA refusal cannot be seen here")
    result = run_script("gpu_acceptance.py", "--out", "never-written.json")
    assert result.returncode == 2 and result.stdout == "" and not (REPO / "never-written.json").exists()
    message = result.stderr.strip()
    assert message.startswith("error: scripts/gpu_acceptance.py needs a CUDA device") and "\n" not in message
    assert "run it on a GPU node" in message
