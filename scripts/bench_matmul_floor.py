"""The matmul floor of one MT-SAC update: its 32 full-size matmuls alone, nothing else.

    python scripts/bench_matmul_floor.py                    # MT10 default sizes, torch's threads
    python scripts/bench_matmul_floor.py --threads 1 --json

At the default sizes (K=10 tasks x 128 rows = 1280 rows, 400-wide hidden layers) one update does
32 matmuls of 1280 x 400 x 400 (the profile of `SACLearner.update` counts 16 forward, 10 input-
gradient and 6 weight-gradient ones: TD target 6, critic step 12, actor step 14; FAMO adds 4 for
its after-step losses). This times exactly those shapes, so an update can be no faster than this
on the same machine and thread count; compare it with `scripts/bench_update.py` in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

# (kind, count) per update: forward x @ W.T, input gradient g @ W, weight gradient g.T @ x.
SHAPES = (("forward", 16), ("input_grad", 10), ("weight_grad", 6))


def one_update(rows: int, width: int, generator: torch.Generator) -> list:
    x = torch.randn(rows, width, generator=generator)
    g = torch.randn(rows, width, generator=generator)
    w = torch.randn(width, width, generator=generator)
    calls = {"forward": lambda: x @ w.T, "input_grad": lambda: g @ w, "weight_grad": lambda: g.T @ x}
    return [calls[kind] for kind, count in SHAPES for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1280, help="K x batch per task (default 10 x 128)")
    parser.add_argument("--width", type=int, default=400, help="agent.hidden_dim (default 400)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    calls = one_update(args.rows, args.width, torch.Generator().manual_seed(0))
    for call in calls[:4]:  # warm-up
        call()
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for call in calls:
            call()
        times.append((time.perf_counter() - started) * 1e3)
    ms = statistics.median(times)
    flops = 2 * args.rows * args.width * args.width * len(calls)
    row = {
        "rows": args.rows,
        "width": args.width,
        "matmuls": len(calls),
        "threads": torch.get_num_threads(),
        "ms": round(ms, 2),
        "gflops": round(flops / ms / 1e6, 1),
    }
    if args.json:
        print(json.dumps(row))
    else:
        print(
            f"{row['matmuls']} matmuls of {args.rows} x {args.width} x {args.width}, {row['threads']} threads: "
            f"{row['ms']:.1f} ms per update ({row['gflops']} GFLOP/s)"
        )


if __name__ == "__main__":
    main()
