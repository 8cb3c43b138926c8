"""Median milliseconds per full multitask SAC update for every balancer, and ratio to MT-SAC.

    python scripts/bench_update.py                  # K=10 and K=50 (MT10/MT50 shapes)
    python scripts/bench_update.py --tasks 10 --json
    python scripts/bench_update.py --device cuda

Each learner is exactly what `python -m mtrl_famo.train env=<mt10|mt50> balancer=<name>` builds:
the config is composed from configs/ with `mtrl_famo.config.compose` and the agent, balancers and
learner come from `mtrl_famo.build`. So the shapes and options are the configs' defaults (MT10:
3 x 400 MLPs, 128 transitions per task, obs 39 + one-hot K, 4-dim actions; FAMO on the critic only,
as published; PCGrad and CAGrad on critic and actor) unless --hidden/--layers/--batch override
them. K other than 10 or 50 uses env=custom with the first K MT50 tasks. The replay holds 1000
random transitions per task (no environment is built). All balancers of one K are timed in the
same run, interleaved round by round, so the ratios are comparable on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial

import torch
from bench_timing import interleaved_ms, time_ms

from mtrl_famo import balancers
from mtrl_famo.build import build_agent, build_learner, build_replay
from mtrl_famo.config import ConfigError, TrainConfig, compose
from mtrl_famo.envs.builder import benchmark_task_names
from mtrl_famo.learner import SACLearner
from mtrl_famo.replay import TaskReplay

REPLAY_PER_TASK = 1000


def bench_config(name: str, k: int, args: argparse.Namespace) -> TrainConfig:
    """The CLI's config for balancer `name` on K tasks, with the command line's overrides."""
    env = (
        [f"env=mt{k}"] if k in (10, 50) else ["env=custom", f"env.tasks=[{','.join(benchmark_task_names('mt50')[:k])}]"]
    )
    overrides = [*env, f"balancer={name}", f"device={args.device}", f"agent.replay_size={REPLAY_PER_TASK * k}"]
    for option, key in (
        ("seed", "seed"),
        ("hidden", "agent.hidden_dim"),
        ("layers", "agent.num_layers"),
        ("batch", "agent.batch_size_per_task"),
    ):
        if getattr(args, option) is not None:
            overrides.append(f"{key}={getattr(args, option)}")
    return compose(*overrides)


def make_learner(config: TrainConfig, device: torch.device) -> tuple[SACLearner, TaskReplay]:
    k = len(config.env.task_names())
    obs_dim, action_dim = config.env.dims()
    torch.manual_seed(config.seed)
    generator = torch.Generator(device).manual_seed(config.seed)
    agent = build_agent(config.agent, obs_dim, action_dim, k, device)
    learner = build_learner(config.agent, config.balancer, agent, generator)
    replay = build_replay(config.agent, k, obs_dim, action_dim, device, generator)
    for _ in range(REPLAY_PER_TASK):
        replay.add(
            obs=torch.randn(k, obs_dim),
            action=torch.rand(k, action_dim) * 2 - 1,
            reward=torch.randn(k),
            next_obs=torch.randn(k, obs_dim),
            terminated=torch.zeros(k),
        )
    return learner, replay


def time_update(learner: SACLearner, replay: TaskReplay, batch: int, device: torch.device) -> float:
    """One update on a fresh sample (the sampling is not timed)."""
    sample = replay.sample(batch)
    return time_ms(lambda: learner.update(sample), device)


def bench(k: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    chosen = args.balancers or list(balancers.NAMES)
    names = ["mtsac", *(name for name in chosen if name != "mtsac")]  # the baseline first: ratios are to it
    configs = {name: bench_config(name, k, args) for name in names}
    setups = {name: make_learner(config, device) for name, config in configs.items()}
    timers = {
        name: partial(time_update, learner, replay, configs[name].agent.batch_size_per_task, device)
        for name, (learner, replay) in setups.items()
    }
    times = interleaved_ms(timers, args.repeats, args.warmup)
    base = statistics.median(times["mtsac"])
    return [
        {
            "balancer": name,
            "tasks": k,
            "ms": round(statistics.median(t), 2),
            "ratio_to_mtsac": round(statistics.median(t) / base, 3),
        }
        for name, t in times.items()
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
