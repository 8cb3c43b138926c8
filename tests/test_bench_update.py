"""scripts/bench_update.py builds what the CLI builds (compose + mtrl_famo.build) and still runs."""

from __future__ import annotations

import json
import subprocess
import sys

from mtrl_famo.balancers import NAMES

from conftest import REPO, run_script


def bench(*arguments: str) -> subprocess.CompletedProcess:
    return run_script("bench_update.py", *arguments)


def test_tiny_benchmark_runs_every_balancer() -> None:
    result = bench(
        "--tasks",
        "3",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--batch",
        "4",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["balancer"] for row in rows] == ["mtsac", *(name for name in NAMES if name != "mtsac")]
    assert all(row["tasks"] == 3 and row["ms"] > 0 for row in rows)


def test_the_learners_are_the_cli_configs() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_update
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from mtrl_famo.config import compose

    args = bench_update.argparse.Namespace(device="cpu", seed=None, hidden=None, layers=None, batch=None)
    config = bench_update.bench_config("famo", 10, args)
    expected = compose("env=mt10", "balancer=famo", "device=cpu", "agent.replay_size=10000")
    assert config == expected  # the config files' defaults; only the device and the replay size are set
    learner, replay = bench_update.make_learner(config, bench_update.torch.device("cpu"))
    famo = learner.balancers["critic"]
    assert famo.optimizer.param_groups[0]["weight_decay"] == 0.01  # configs/balancer/famo.yaml's gamma
    assert type(learner.balancers["actor"]).__name__ == "MeanLoss" and len(replay) == bench_update.REPLAY_PER_TASK


def test_bad_input_is_one_line() -> None:
    result = bench("--tasks", "2", "--batch", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: agent.batch_size_per_task=0 is invalid; it must be a positive integer."
    ]
