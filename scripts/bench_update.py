"""Median milliseconds per full multitask SAC update for every balancer, and ratio to MT-SAC.

    python scripts/bench_update.py                  # K=10 and K=50 (MT10/MT50 shapes)
    python scripts/bench_update.py --tasks 10 --json
    python scripts/bench_update.py --device cuda

Each learner is what `python -m mtrl_famo.train env=<mt10|mt50> balancer=<name>` builds, by the
benchmarks' one builder (scripts/bench_harness.py): the configs' defaults (MT10: 3 x 400 MLPs, 128
transitions per task, obs 39 + one-hot K, 4-dim actions; FAMO on the critic only, as published;
PCGrad and CAGrad on critic and actor) unless --hidden/--layers/--batch override them, a replay of
1000 random transitions per task. All balancers of one K are timed in the same run, interleaved
round by round (scripts/bench_timing.py), so the ratios are comparable on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from bench_harness import REPLAY_PER_TASK, compose_config, make_learner, size_overrides, update_timer
from bench_timing import interleaved_ms, time_ms

from mtrl_famo import balancers
from mtrl_famo.config import ConfigError, TrainConfig

# What scripts/gpu_acceptance.py imports from here.
__all__ = ["REPLAY_PER_TASK", "bench_config", "interleaved_ms", "make_learner", "time_ms"]


def bench_config(name: str, k: int, args: argparse.Namespace) -> TrainConfig:
    """The CLI's config for balancer `name` on K tasks, with the command line's overrides."""
    return compose_config(name, k, args.device, *size_overrides(args.hidden, args.layers, args.batch, args.seed))


def bench(k: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    chosen = args.balancers or list(balancers.NAMES)
    names = ["mtsac", *(name for name in chosen if name != "mtsac")]  # the baseline first: ratios are to it
    configs = {name: bench_config(name, k, args) for name in names}
    setups = {name: make_learner(config, device) for name, config in configs.items()}
    timers = {
        name: update_timer(learner.update, replay, configs[name].agent.batch_size_per_task, device)
        for name, (learner, replay) in setups.items()
    }
    walls = {name: [wall for wall, _ in t] for name, t in interleaved_ms(timers, args.repeats, args.warmup).items()}
    base = statistics.median(walls["mtsac"])
    return [
        {
            "balancer": name,
            "tasks": k,
            "ms": round(statistics.median(t), 2),
            "ratio_to_mtsac": round(statistics.median(t) / base, 3),
        }
        for name, t in walls.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="*", default=[10, 50], help="K values to run (default: 10 50)")
    parser.add_argument("--balancers", nargs="*", default=None, help=f"subset of {', '.join(balancers.NAMES)}")
    parser.add_argument("--batch", type=int, default=None, help="agent.batch_size_per_task (default: the config's)")
    parser.add_argument("--hidden", type=int, default=None, help="agent.hidden_dim (default: the config's)")
    parser.add_argument("--layers", type=int, default=None, help="agent.num_layers (default: the config's)")
    parser.add_argument("--repeats", type=int, default=20, help="timed updates per balancer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates per balancer first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the config's)")
    parser.add_argument("--json", action="store_true", help="one JSON object per balancer instead of a table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        shapes = {k: bench_config("mtsac", k, args).agent for k in args.tasks}  # bad input stops here, in one line
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")
    if not args.json:
        print(
            f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats} "
            + " ".join(
                f"K={k}: batch/task={a.batch_size_per_task} {a.num_layers}x{a.hidden_dim}" for k, a in shapes.items()
            )
        )
        print(f"{'K':>3} {'balancer':<12} {'ms/update':>10} {'x mtsac':>8}")
    for k in args.tasks:
        for row in bench(k, args, device):
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(
                    f"{row['tasks']:>3} {row['balancer']:<12} {row['ms']:>10.2f} {row['ratio_to_mtsac']:>8.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
