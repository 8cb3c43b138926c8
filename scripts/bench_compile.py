"""Eager vs compiled (vs CUDA graph) update: median ms per update and the ratio to eager.

    python scripts/bench_compile.py                          # mtsac and famo, smoke and default sizes
    python scripts/bench_compile.py --threads 2 --json
    python scripts/bench_compile.py --device cuda            # adds the graph variants

Each update is what `python -m mtrl_famo.train env=mt10 balancer=<name>` trains with (the
benchmarks' one builder, scripts/bench_harness.py, then its speed layers self-checked by
`mtrl_famo.build.build_update`) with `agent.compile` /
`agent.cuda_graph` set per variant (`true`: a layer that fails its check stops the script). Sizes are
LAYERSxHIDDENxBATCH_PER_TASK: 2x256x64 is experiment=smoke, 3x400x128 the default agent. The
variants of one balancer and size are timed interleaved, update by update, on the same batches,
so their ratio holds on a noisy machine; compilation happens in the untimed warm-up updates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from functools import partial

import torch
from bench_harness import compose_config, make_learner
from bench_timing import interleaved_ms, time_ms

from mtrl_famo.build import build_update
from mtrl_famo.config import ConfigError
from mtrl_famo.learner import UpdateFn
from mtrl_famo.replay import TaskReplay
from mtrl_famo.self_check import SpeedLayerError

# variant -> (agent.compile, agent.cuda_graph)
VARIANTS = {"eager": (False, False), "compiled": (True, False), "graph": (False, True), "compiled+graph": (True, True)}


def update_for(balancer: str, k: int, size: str, variant: str, args: argparse.Namespace) -> tuple[UpdateFn, TaskReplay]:
    """The self-checked update of one variant, and its replay (the same for every variant: same seed)."""
    layers, hidden, batch = size.split("x")
    compile_on, graph_on = VARIANTS[variant]
    config = compose_config(
        balancer,
        k,
        args.device,
        f"agent.num_layers={layers}",
        f"agent.hidden_dim={hidden}",
        f"agent.batch_size_per_task={batch}",
        f"agent.compile={str(compile_on).lower()}",
        f"agent.cuda_graph={str(graph_on).lower()}",
    )
    learner, replay = make_learner(config, torch.device(args.device))
    return build_update(config.agent, config.balancer, learner).update, replay


def bench(balancer: str, k: int, size: str, variants: list[str], args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    built = {variant: update_for(balancer, k, size, variant, args) for variant in variants}
    replay = built[variants[0]][1]
    batches = [replay.sample(int(size.split("x")[2])) for _ in range(8)]
    feeds = {variant: itertools.cycle(batches) for variant in variants}  # every variant sees the same batches

    def timer(variant: str) -> float:
        update, batch = built[variant][0], next(feeds[variant])
        return time_ms(lambda: update(batch), device)

    # What the self-check left to compile or capture happens in the untimed warm-up rounds.
    times = interleaved_ms({variant: partial(timer, variant) for variant in variants}, args.repeats, args.warmup)
    base = statistics.median(times[variants[0]])
    return [
        {
            "balancer": balancer,
            "tasks": k,
            "size": size,
            "variant": variant,
            "ms": round(statistics.median(t), 2),
            f"ratio_to_{variants[0]}": round(statistics.median(t) / base, 3),
        }
        for variant, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--balancers", nargs="*", default=["mtsac", "famo"])
    parser.add_argument("--sizes", nargs="*", default=["2x256x64", "3x400x128"], help="LAYERSxHIDDENxBATCH_PER_TASK")
    parser.add_argument("--tasks", type=int, default=10, help="K (10 and 50 use env=mt10/mt50)")
    parser.add_argument("--variants", nargs="*", default=None, help=f"subset of {', '.join(VARIANTS)} (eager first)")
    parser.add_argument("--repeats", type=int, default=30, help="timed updates per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates per variant first (compile, capture)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    variants = args.variants or [v for v in VARIANTS if cuda or not VARIANTS[v][1]]
    if variants[0] != "eager" or any(v not in VARIANTS for v in variants):
        valid = ", ".join(VARIANTS)
        parser.exit(2, f"error: --variants {' '.join(variants)} is invalid; start with eager, then any of {valid}.\n")
    if not args.json:
        print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}", end=" ")
        print(f"K={args.tasks} repeats={args.repeats}")
        print(f"{'balancer':<8} {'size':<10} {'variant':<15} {'ms/update':>10} {'x eager':>8}")
    for balancer in args.balancers:
        for size in args.sizes:
            try:
                rows = bench(balancer, args.tasks, size, variants, args)
            except (ConfigError, SpeedLayerError) as error:
                parser.exit(2, f"error: {error}\n")
            for row in rows:
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    ratio = row["ratio_to_eager"]
                    print(f"{balancer:<8} {size:<10} {row['variant']:<15} {row['ms']:>10.2f} {ratio:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
