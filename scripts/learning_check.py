"""Does it learn? Train MT10 with the `smoke` preset for a wall-clock budget on CPU, then report.

    python scripts/learning_check.py                          # mtsac, seed 0, 30 minutes
    python scripts/learning_check.py --balancer famo --minutes 30 --json
    python scripts/learning_check.py --balancer pcgrad --seed 1 -- agent.hidden_dim=128
    python scripts/learning_check.py --balancer famo -- agent/network=moore

The run is an ordinary CLI run (`experiment=smoke env=mt10 balancer=<name>`, device=cpu) that
stops at the first episode end after `--minutes`, evaluates (the preset's 10 deterministic
episodes per task, success at any step) and checkpoints; its run directory (default: the preset's,
runs/smoke/mt10/<network>/<balancer>/seed=<n>) holds the TensorBoard curves. Printed: the network,
success per task and the mean, environment steps per task reached, and the run's throughput. Extra
Hydra overrides after `--` are passed on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import yaml


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--balancer", default="mtsac")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--run-dir",
        default=None,
        help="default: the preset's, runs/smoke/mt10/<network>/<balancer>/seed=<n>; must hold no files",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from mtrl_famo.callbacks import WallClockLimit
    from mtrl_famo.config import ConfigError, compose
    from mtrl_famo.trainer import Trainer

    args = parse_args(argv)
    try:
        if args.minutes <= 0:
            raise ConfigError(f"--minutes={args.minutes} is invalid; give a positive number of minutes.")
        config = compose(
            "experiment=smoke",
            "env=mt10",
            f"balancer={args.balancer}",
            f"seed={args.seed}",
            "device=cpu",
            "progress=false",
            "steps=100000000",  # the wall-clock budget ends the run
            *([f"run_dir='{args.run_dir}'"] if args.run_dir else []),
            *args.overrides,
        )
        run_dir = Path(config.run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"run dir {run_dir} already holds files; remove it or choose another --run-dir.")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    trainer = Trainer(config)
    # The composed config, saved as the CLI saves it: `python -m mtrl_famo.evaluate` and the report read it.
    resolved = yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(config))), sort_keys=False)
    summary = trainer.train(resolved, callbacks=[WallClockLimit(args.minutes * 60.0)])
    seconds = time.perf_counter() - started
    per_task = summary["eval_success_rate_per_task"]
    network = config.agent.network["name"]
    report = {
        "network": network,
        "balancer": args.balancer,
        "seed": args.seed,
        "minutes": args.minutes,
        "env_steps_per_task": summary["env_steps"],
        "wall_clock_s": round(seconds, 1),
        "vector_steps_per_s": round(summary["env_steps"] / seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "mean_success": summary["eval_success_rate"],
        "success_per_task": per_task,
        "run_dir": str(run_dir),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"network={network} balancer={args.balancer} seed={args.seed}: "
        f"{summary['env_steps']} steps per task in {seconds / 60:.1f} min "
        f"({report['vector_steps_per_s']} vector steps/s, {report['torch_threads']} torch threads)"
    )
    width = max(map(len, per_task))
    for task, value in per_task.items():
        print(f"  {task:<{width}}  {value:5.2f}")
    print(f"  {'mean':<{width}}  {summary['eval_success_rate']:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
