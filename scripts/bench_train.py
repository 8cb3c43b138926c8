"""End-to-end training throughput: the real loop, real Metaworld envs, real updates.

    python scripts/bench_train.py                                   # MT10, mtsac and famo, the CLI's defaults
    python scripts/bench_train.py --env mt50 --balancer famo --steps 100 --json
    python scripts/bench_train.py --vector sync workers --overlap false true --balancer mtsac
    python scripts/bench_train.py --balancer famo -- experiment=smoke env.workers=1
    python scripts/bench_train.py --device cuda --balancer mtsac famo --compile false true --cuda-graph false true

Each configuration is what `python -m mtrl_famo.train env=<env> balancer=<b> ...` builds, run by
`Trainer.train` itself (logging, evaluation cadence and the overlap of env stepping and updates
included). After the random-action warm-up (`--warmup`, default 100 steps per task instead of the
config's 1500, which only fills the replay) and `--skip` untimed learning steps, `--steps` vector
steps are timed (a `TimedWindow` callback, no patching) and the run is stopped. Printed per configuration:

- steps_per_s: vector steps (one step of every task) per second, wall clock;
- env_ms: main-thread time per vector step spent stepping the envs or waiting for their workers
  (with loop.overlap the update runs while the workers step, so this is only the wait left over);
- update_ms: time per vector step in the learner's updates (on CUDA device time from CUDA events,
  without adding a host sync: `mtrl_famo.timing.UpdateTimer`, the timer behind perf/update_ms);
- other_ms: the rest of the iteration's host time (acting, replay writes, logging, evaluation at its
  cadence): wall clock minus env time minus the host time of the update calls;
- update: the update the run trained with after its self-check (eager, compiled or graph:
  mtrl_famo.self_check), e.g. `compiled` where `--cuda-graph true` cannot capture a balancer.

Evaluation only happens inside the timed steps when `--eval-every` (eval.every) is small enough.
The configurations of one invocation run one after another in the same process, so compare
figures of one invocation only: this machine's load changes between runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from typing import Any

import torch

from mtrl_famo.callbacks import Callback, Stop
from mtrl_famo.compiled_update import resolve_compile
from mtrl_famo.config import ConfigError, TrainConfig, compose
from mtrl_famo.self_check import SpeedLayerError
from mtrl_famo.trainer import Trainer


class TimedWindow(Callback):
    """Marks the `steps` vector steps after env step `first` and stops the loop when they are done.

    At each end it reads the wall clock, the collector's env time and the trainer's update timer
    (its device time syncs once here, never per step).
    """

    def __init__(self, first: int, steps: int):
        self.first, self.steps = first, steps
        self.marks: dict[str, dict[str, float]] = {}

    def on_step_end(self, trainer: Trainer) -> Stop | None:
        if trainer.env_step not in (self.first, self.first + self.steps):
            return None
        at = "start" if trainer.env_step == self.first else "end"
        self.marks[at] = {
            "wall": time.perf_counter(),
            "env": trainer.collector.env_seconds,
            "update_host": trainer.update_timer.host_seconds,
            "update": trainer.update_timer.device_seconds(),
        }
        return Stop.NOW if at == "end" else None

    def ms_per_step(self, what: str) -> float:
        return (self.marks["end"][what] - self.marks["start"][what]) / self.steps * 1e3


def bench_config(
    args: argparse.Namespace,
    balancer: str,
    vector: str | None,
    compile_: str | None,
    overlap: str | None,
    graph: str | None = None,
) -> TrainConfig:
    """The CLI's config with the benchmark's horizon; `args.overrides` (after `--`) win over the rest."""
    steps = args.warmup + args.skip + args.steps + 1
    overrides = [
        f"env={args.env}",
        f"balancer={balancer}",
        f"device={args.device}",
        f"agent.warmup_steps={args.warmup}",
        f"steps={steps}",
        f"eval.every={args.eval_every or steps}",  # at most the final one, which is never reached
        "checkpoint.every=0",
        "progress=false",
    ]
    if vector is not None:
        overrides.append(f"env.vector_strategy={vector}")
    if compile_ is not None:
        overrides.append(f"agent.compile={compile_}")
    if overlap is not None:
        overrides.append(f"loop.overlap={overlap}")
    if graph is not None:
        overrides.append(f"agent.cuda_graph={graph}")
    return compose(*overrides, *args.overrides)


def measure(config: TrainConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Run the real training loop until `args.steps` vector steps past warm-up and skip are timed."""
    with tempfile.TemporaryDirectory(prefix="bench_train_") as run_dir:
        trainer = Trainer(dataclasses.replace(config, run_dir=run_dir))
        device = trainer.device
        window = TimedWindow(args.warmup + args.skip, args.steps)
        trainer.train(callbacks=[window])
        step_ms, env_ms = window.ms_per_step("wall"), window.ms_per_step("env")
        # other = the iteration's host time outside env calls and update calls; update_ms is device
        # time on CUDA (the host only launches it), so it is not subtracted from the wall clock.
        other_ms = step_ms - env_ms - window.ms_per_step("update_host")
        update_ms = window.ms_per_step("update")
        return {
            "env": config.env.name,
            "balancer": config.balancer.name,
            "device": str(device),
            "compile": resolve_compile(config.agent.compile, device),
            "cuda_graph": config.agent.cuda_graph,
            "update": trainer.update_choice.used,
            "verdicts": {v.layer: v.outcome for v in trainer.update_choice.verdicts},
            "vector": config.env.vector_strategy,
            "overlap": config.loop.overlap,
            "tasks": trainer.env.num_tasks,
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "steps_per_s": round(1e3 / step_ms, 2),
            "env_ms": round(env_ms, 2),
            "update_ms": round(update_ms, 2),
            "other_ms": round(other_ms, 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="mt10", help="env group: mt10 | mt50 | mt1 | custom (default mt10)")
    parser.add_argument("--balancer", nargs="+", default=["mtsac", "famo"], help="balancers (default: mtsac famo)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--vector", nargs="+", default=[None], help="env.vector_strategy values (default: config's)")
    parser.add_argument("--compile", nargs="+", default=[None], help="agent.compile values (default: config's)")
    parser.add_argument("--overlap", nargs="+", default=[None], help="loop.overlap values (default: config's)")
    parser.add_argument(
        "--cuda-graph", nargs="+", default=[None], help="agent.cuda_graph values (default: config's; CUDA only)"
    )
    parser.add_argument("--steps", type=int, default=200, help="timed vector steps per configuration")
    parser.add_argument("--warmup", type=int, default=100, help="agent.warmup_steps (random actions, untimed)")
    parser.add_argument("--skip", type=int, default=10, help="untimed learning steps after the warm-up")
    parser.add_argument("--eval-every", type=int, default=None, help="eval.every (default: no eval while timed)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")
    parser.add_argument("overrides", nargs="*", help="config overrides after `--`, e.g. experiment=smoke")
    args = parser.parse_args()
    if args.steps < 1:
        parser.exit(2, f"error: --steps must be at least 1, got {args.steps}.\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = [
        (b, v, c, o, g)
        for b in args.balancer
        for v in args.vector
        for c in args.compile
        for o in args.overlap
        for g in args.cuda_graph
    ]
    try:
        configs = [bench_config(args, *point) for point in grid]  # bad input stops here, in one sentence
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")
    header = (
        f"{'env':<6} {'balancer':<9} {'vector':<8} {'overlap':<7} {'compile':<7} "
        f"{'update':<8} {'steps/s':>8} {'env ms':>7} {'upd ms':>7} {'other ms':>8}"
    )
    if not args.json:
        print(f"torch={torch.__version__} threads={torch.get_num_threads()} timed steps={args.steps}")
        print(header)
    for config in configs:
        try:
            row = measure(config, args)
        except SpeedLayerError as error:  # a layer set to true failed its self-check
            parser.exit(2, f"error: {error}\n")
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{row['env']:<6} {row['balancer']:<9} {row['vector']:<8} {row['overlap']!s:<7} "
                f"{row['compile']!s:<7} {row['update']:<8} {row['steps_per_s']:>8.1f} {row['env_ms']:>7.2f} "
                f"{row['update_ms']:>7.2f} {row['other_ms']:>8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
