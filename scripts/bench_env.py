"""Vector-env throughput: Metaworld MT10/MT50 steps per second with random actions.

    python scripts/bench_env.py                          # MT10, sync and async
    python scripts/bench_env.py --env mt50 --strategies sync --steps 1000 --json

One vector step advances every task by one step, so `vector_steps_per_s` is the x-axis rate of a
training run (environment steps per task per second) before any update cost, and
`transitions_per_s` = vector_steps_per_s x K.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mtrl_famo.config import compose
from mtrl_famo.envs import build_env


def measure(env_name: str, strategy: str, steps: int, seed: int = 0) -> dict[str, float | int | str]:
    """Time `steps` vector steps (after a short warm-up), episode resets included."""
    spec = compose(f"env={env_name}", f"env.vector_strategy={strategy}").env  # the env the CLI would build
    env = build_env(spec, seed)
    try:
        rng = np.random.default_rng(seed)
        shape = (env.num_tasks, env.action_dim)
        for _ in range(20):
            env.step(rng.uniform(-1, 1, shape).astype(np.float32))
        started = time.perf_counter()
        for _ in range(steps):
            env.step(rng.uniform(-1, 1, shape).astype(np.float32))
        seconds = time.perf_counter() - started
    finally:
        env.close()
    rate = steps / seconds
    return {
        "env": env_name,
        "strategy": strategy,
        "tasks": env.num_tasks,
        "vector_steps_per_s": round(rate, 1),
        "transitions_per_s": round(rate * env.num_tasks, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="mt10", choices=["mt10", "mt50"])
    parser.add_argument("--strategies", default="sync,async", help="comma-separated: sync, async")
    parser.add_argument("--steps", type=int, default=2000, help="timed vector steps (500 = one episode)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = parser.parse_args()
    rows = [measure(args.env, strategy, args.steps) for strategy in args.strategies.split(",")]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'env':<6}{'strategy':<10}{'tasks':>6}{'vector steps/s':>16}{'transitions/s':>15}")
    for row in rows:
        print(
            f"{row['env']:<6}{row['strategy']:<10}{row['tasks']:>6}{row['vector_steps_per_s']:>16}{row['transitions_per_s']:>15}"
        )


if __name__ == "__main__":
    main()
