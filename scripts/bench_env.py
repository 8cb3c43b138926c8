"""Vector-env throughput: Metaworld MT10/MT50 steps per second with random actions.

    python scripts/bench_env.py                          # MT10, sync and async
    python scripts/bench_env.py --env mt50 --strategies sync --steps 1000 --json
    python scripts/bench_env.py --strategies sync,workers --workers 1,auto   # env.workers values

One vector step advances every task by one step, so `vector_steps_per_s` is the x-axis rate of a
training run (environment steps per task per second) before any update cost, and
`transitions_per_s` = vector_steps_per_s x K. `main_cpu_ms_per_step` is the CPU time a step costs
this (the learner's) process: all of the simulation with sync, only sending actions and merging
results with workers, which leaves the rest of the step free for overlapped updates (loop.overlap).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from mtrl_famo.config import compose
from mtrl_famo.envs import MultiTaskEnv, build_env
from mtrl_famo.envs.builder import worker_count


def time_steps(env: MultiTaskEnv, steps: int, rng: np.random.Generator) -> tuple[float, float]:
    """(vector steps per second, this process's CPU ms per step) over `steps` steps, resets included.
    The CPU time is what stepping costs the learner's core: with workers, only sending and merging."""
    shape = (env.num_tasks, env.action_dim)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        env.step(rng.uniform(-1, 1, shape).astype(np.float32))
    return steps / (time.perf_counter() - started), 1e3 * (time.process_time() - cpu) / steps


def measure(
    env_name: str, settings: list[tuple[str, str]], steps: int, repeats: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Build one env per (strategy, workers) setting, then time them in turn `repeats` times and keep
    each one's best round: on a shared machine, interleaving spreads the load of others evenly."""
    envs, rows = [], []
    try:
        for strategy, workers in settings:
            overrides = [f"env={env_name}", f"env.vector_strategy={strategy}", f"env.workers={workers}"]
            spec = compose(*overrides).env  # the env the CLI would build
            envs.append(build_env(spec, seed))
            processes = worker_count(spec.workers, envs[-1].num_tasks)
            name = strategy if strategy != "workers" else f"workers={workers}({processes})"
            rows.append({"env": env_name, "strategy": name, "tasks": envs[-1].num_tasks, "rates": []})
        rng = np.random.default_rng(seed)
        for env in envs:
            time_steps(env, 20, rng)  # warm-up
        for _ in range(repeats):
            for env, row in zip(envs, rows):
                row["rates"].append(time_steps(env, steps, rng))
    finally:
        for env in envs:
            env.close()
    for row in rows:
        rate, cpu_ms = max(row.pop("rates"))
        row.update(
            vector_steps_per_s=round(rate, 1),
            transitions_per_s=round(rate * row["tasks"], 1),
            main_cpu_ms_per_step=round(cpu_ms, 2),
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="mt10", choices=["mt10", "mt50"])
    parser.add_argument("--strategies", default="sync,async", help="comma-separated: sync, async, workers")
    parser.add_argument("--workers", default="auto", help="comma-separated env.workers values for `workers`")
    parser.add_argument("--steps", type=int, default=2000, help="timed vector steps per round (500 = one episode)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, interleaved across settings; best one kept")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = parser.parse_args()
    settings = [
        (strategy, workers)
        for strategy in args.strategies.split(",")
        for workers in (args.workers.split(",") if strategy == "workers" else ["auto"])
    ]
    rows = measure(args.env, settings, args.steps, args.repeats)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'env':<6}{'strategy':<20}{'tasks':>6}{'vector steps/s':>16}{'transitions/s':>15}{'main CPU ms/step':>18}")
    for row in rows:
        print(
            f"{row['env']:<6}{row['strategy']:<20}{row['tasks']:>6}{row['vector_steps_per_s']:>16}"
            f"{row['transitions_per_s']:>15}{row['main_cpu_ms_per_step']:>18}"
        )


if __name__ == "__main__":
    main()
