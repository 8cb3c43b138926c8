"""The one builder of the update the benchmarks time, and the worker that times it for bench_against.py.

Used by scripts/bench_update.py (every balancer), bench_compile.py (eager vs compiled vs graph) and
bench_against.py (this tree vs a git revision); all of them time with scripts/bench_timing.py.
Each learner is exactly what `python -m mtrl_famo.train env=<mt10|mt50> balancer=<name>` builds:
the config is composed from configs/ with `mtrl_famo.config.compose` (K other than 10 or 50:
env=custom with the first K MT50 tasks), the agent, balancers and learner come from
`mtrl_famo.build`, seeded by the config's seed, and the replay holds REPLAY_PER_TASK random
transitions per task (no environment is built).

    python scripts/bench_harness.py --tasks 3 --balancers mtsac famo --threads 1   # a worker

As a worker it builds one learner per balancer, prints `ready <where mtrl_famo.agents lives>`, then
reads a balancer name per line from stdin and answers the wall and process-CPU milliseconds of one
update of that learner on a fresh sample. bench_against.py starts one with PYTHONPATH at an
extracted revision and `--isolated`; mtrl_famo is imported inside the functions here so that the
worker decides which mtrl_famo (the revision's or this tree's) before its first import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from bench_timing import time_wall_cpu_ms

if TYPE_CHECKING:
    from mtrl_famo.config import TrainConfig
    from mtrl_famo.learner import SACLearner
    from mtrl_famo.replay import TaskReplay

REPLAY_PER_TASK = 1000


def compose_config(balancer: str, k: int, device: str, *overrides: str) -> TrainConfig:
    """The CLI's config for `balancer` on K tasks on `device`, a replay of REPLAY_PER_TASK per task,
    then `overrides` (`key=value`, as on the command line)."""
    from mtrl_famo.config import compose
    from mtrl_famo.envs.builder import benchmark_task_names

    tasks = ",".join(benchmark_task_names("mt50")[:k])
    env = [f"env=mt{k}"] if k in (10, 50) else ["env=custom", f"env.tasks=[{tasks}]"]
    return compose(
        *env, f"balancer={balancer}", f"device={device}", f"agent.replay_size={REPLAY_PER_TASK * k}", *overrides
    )


def size_overrides(
    hidden: int | None = None, layers: int | None = None, batch: int | None = None, seed: int | None = None
) -> list[str]:
    """Overrides for the sizes and seed a command line gave (None: the config's)."""
    keys = {"agent.hidden_dim": hidden, "agent.num_layers": layers, "agent.batch_size_per_task": batch, "seed": seed}
    return [f"{key}={value}" for key, value in keys.items() if value is not None]


def make_learner(config: TrainConfig, device: torch.device) -> tuple[SACLearner, TaskReplay]:
    """The learner the CLI builds for `config` (eager update), and a replay of random transitions."""
    from mtrl_famo.build import build_agent, build_learner, build_replay

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


def update_timer(
    update: Callable[[object], object], replay: TaskReplay, batch: int, device: torch.device
) -> Callable[[], tuple[float, float]]:
    """A timer of one `update` on a fresh sample of `batch` per task (the sampling is not timed):
    each call returns (wall ms, process-CPU ms)."""

    def timer() -> tuple[float, float]:
        sample = replay.sample(batch)
        return time_wall_cpu_ms(lambda: update(sample), device)

    return timer


def worker_arguments(
    tasks: int, balancers: Sequence[str], hidden: int | None, layers: int | None, batch: int | None, threads: int
) -> list[str]:
    """The command line of a worker (this script) for these settings."""
    sizes = {"--hidden": hidden, "--layers": layers, "--batch": batch}
    given = [item for option, value in sizes.items() if value is not None for item in (option, str(value))]
    return ["--tasks", str(tasks), "--balancers", *balancers, *given, "--threads", str(threads)]


def drop_editable_finder() -> None:
    """Forget the editable install's finder, which maps any mtrl_famo.* that PYTHONPATH's copy lacks to
    the working tree: a revision's worker must import the revision's code or fail."""
    sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]


def serve(argv: Sequence[str] | None = None) -> None:
    """The worker: build the learners, say ready, then time one update per balancer name read from stdin."""
    parser = argparse.ArgumentParser(description="A bench_against.py worker (see the module docstring).")
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--balancers", nargs="+", required=True)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--isolated", action="store_true", help="import mtrl_famo from PYTHONPATH only")
    args = parser.parse_args(argv)
    if args.isolated:
        drop_editable_finder()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    timers = {}
    for name in args.balancers:
        config = compose_config(name, args.tasks, "cpu", *size_overrides(args.hidden, args.layers, args.batch))
        learner, replay = make_learner(config, device)
        timers[name] = update_timer(learner.update, replay, config.agent.batch_size_per_task, device)
    import mtrl_famo.agents

    print("ready", mtrl_famo.agents.__file__, flush=True)
    for line in sys.stdin:
        wall, cpu = timers[line.strip()]()
        print(wall, cpu, flush=True)


if __name__ == "__main__":
    serve()
