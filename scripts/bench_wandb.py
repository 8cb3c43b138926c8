"""What W&B logging (wandb.enabled=true) costs a training step, measured in offline mode.

    python scripts/bench_wandb.py                              # the CLI's defaults (MT10, mtsac)
    python scripts/bench_wandb.py --json --step-ms 120 -- env=mt50 balancer=cagrad

The trainer's own logging calls (`TrainMetrics.write` with the configured balancer's weights and
gradient-conflict tags, `MetricsWriter.evaluation` at eval.every) write `--intervals` log intervals,
once to TensorBoard alone and once to TensorBoard and a W&B run (WANDB_MODE=offline unless it is set,
in a temporary WANDB_DIR). Per training step, W&B costs the extra wall time per interval in this
process plus the CPU time of W&B's service process (wandb-core, measured after the run is finished),
both divided by log.every; it is compared with one training step of the same config (`--step-ms`, or
measured by scripts/bench_train.py's timed window). W&B only receives the floats TensorBoard already
got, so it adds no host/device sync; the averaged updates per interval are `--updates` stand-ins
(their number changes TensorBoard's work, not W&B's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtrl_famo.balanced_backward import ConflictStats
from mtrl_famo.build import build_balancers
from mtrl_famo.config import ConfigError, TrainConfig, compose
from mtrl_famo.envs import EvalResult
from mtrl_famo.learner import UpdateResult
from mtrl_famo.metrics import MetricsWriter, TrainMetrics
from mtrl_famo.wandb_logger import WandbRun


def service_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's wandb-core children, from /proc (Linux)."""
    total, ticks = 0.0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            name = stat.read_text().split("(", 1)[1].split(")", 1)[0]
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and name.startswith("wandb-core"):
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def log_intervals(config: TrainConfig, writer: MetricsWriter, intervals: int, updates: int) -> float:
    """Wall seconds the trainer's logging calls take for `intervals` log intervals (stand-in figures)."""
    names = config.env.task_names()
    k, device = len(names), torch.device("cpu")
    balancers = build_balancers(config.balancer, k, device)
    metrics = TrainMetrics()
    metrics.start_window(0)
    generator = torch.Generator().manual_seed(0)
    elapsed = 0.0
    for interval in range(1, intervals + 1):
        step = interval * config.log.every
        conflicts = {loss: ConflictStats(*torch.rand(3, generator=generator)) for loss in config.balancer.apply_to}
        metrics.add_updates(
            [UpdateResult(*torch.rand(3, k, generator=generator), conflicts=conflicts) for _ in range(updates)]
        )
        episodes = (np.random.default_rng(interval).random(k), np.random.default_rng(interval).random(k))
        result = EvalResult(list(names), np.random.default_rng(step).random(k), np.random.default_rng(step).random(k))
        started = time.perf_counter()
        metrics.write(writer, step, episodes, torch.rand(k, 1), balancers, config.balancer.apply_to, update_seconds=0.1)
        if step % config.eval.every < config.log.every:  # the trainer logs an evaluation about this often
            writer.evaluation(result, step)
            writer.flush()
        elapsed += time.perf_counter() - started
    return elapsed


def training_step_ms(overrides: list[str]) -> float:
    """One vector step of the real loop with this config, timed by scripts/bench_train.py's window
    (30 steps after a 100-step random warm-up and 10 untimed learning steps)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import measure as measure_training

    window = argparse.Namespace(warmup=100, skip=10, steps=30)
    steps = window.warmup + window.skip + window.steps + 1
    horizon = [f"agent.warmup_steps={window.warmup}", f"steps={steps}", f"eval.every={steps}", "checkpoint.every=0"]
    config = compose(*overrides, "device=cpu", "progress=false", *horizon)
    return 1e3 / measure_training(config, window)["steps_per_s"]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    config = compose(*args.overrides, "device=cpu", "wandb.enabled=true")
    with tempfile.TemporaryDirectory(prefix="bench_wandb_") as root:
        plain = MetricsWriter(Path(root) / "plain", config.env.task_names())
        try:
            tensorboard_s = log_intervals(config, plain, args.intervals, args.updates)
        finally:
            plain.close()
        run_dir = Path(root) / "wandb"
        run_dir.mkdir()
        writer = MetricsWriter(run_dir, config.env.task_names())
        try:
            started = time.perf_counter()
            writer.wandb = WandbRun(config.wandb, run_dir, {"bench": True}, resumed=False)
            init_s = time.perf_counter() - started
            service_before = service_cpu_seconds()
            both_s = log_intervals(config, writer, args.intervals, args.updates)
        finally:
            started = time.perf_counter()
            writer.close()
            finish_s = time.perf_counter() - started
        service_s = service_cpu_seconds() - service_before
    per_step_ms = 1e3 * (both_s - tensorboard_s + service_s) / (args.intervals * config.log.every)
    step_ms = args.step_ms if args.step_ms is not None else training_step_ms(args.overrides)
    return {
        "env": config.env.name,
        "balancer": config.balancer.name,
        "wandb_mode": os.environ["WANDB_MODE"],
        "intervals": args.intervals,
        "log_every": config.log.every,
        "tensorboard_ms_per_interval": 1e3 * tensorboard_s / args.intervals,
        "with_wandb_ms_per_interval": 1e3 * both_s / args.intervals,
        "wandb_service_cpu_ms_per_interval": 1e3 * service_s / args.intervals,
        "wandb_init_s": init_s,
        "wandb_finish_s": finish_s,
        "wandb_ms_per_training_step": per_step_ms,
        "training_step_ms": step_ms,
        "fraction_of_a_step": per_step_ms / step_ms,
    }


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("--intervals", type=int, default=200, help="log intervals to write")
    parse.add_argument("--updates", type=int, default=10, help="stand-in update results averaged per interval")
    parse.add_argument("--step-ms", type=float, help="a training step's wall time (default: measured)")
    parse.add_argument("--json", action="store_true", help="print the figures as JSON")
    parse.add_argument("overrides", nargs="*", help="training overrides (after --), e.g. env=mt50")
    args = parse.parse_args()
    try:
        row = measure(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.json:
        print(json.dumps(row, indent=2))
        return
    print(
        f"{row['env']} {row['balancer']}, W&B {row['wandb_mode']}, log.every={row['log_every']}: one log interval "
        f"{row['tensorboard_ms_per_interval']:.2f} ms TensorBoard alone, {row['with_wandb_ms_per_interval']:.2f} ms "
        f"with W&B (+{row['wandb_service_cpu_ms_per_interval']:.2f} ms CPU of wandb-core)\n"
        f"W&B per training step {row['wandb_ms_per_training_step']:.4f} ms of a {row['training_step_ms']:.1f} ms step "
        f"= {100 * row['fraction_of_a_step']:.3f}% (once per run: init {row['wandb_init_s']:.1f} s, "
        f"finish {row['wandb_finish_s']:.1f} s)"
    )


if __name__ == "__main__":  # the env worker processes of the measured training step re-import this module
    main()
