"""Median milliseconds per full multitask SAC update for every balancer, and ratio to MT-SAC.

    python scripts/bench_update.py                  # K=10 and K=50 (MT10/MT50 shapes)
    python scripts/bench_update.py --tasks 10 --json
    python scripts/bench_update.py --device cuda

Shapes follow the published MT10 setup: 3 x 400 MLPs, 128 transitions per task, obs 39 +
one-hot K, 4-dim actions. Each balancer runs with the options and `apply_to` of its
`configs/balancer/<name>.yaml` (what `python -m mtrl_famo.train balancer=<name>` uses: FAMO on the
critic only, as published; PCGrad and CAGrad on critic and actor). All balancers of one K are
timed in the same run, interleaved round by round, so the ratios are comparable on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mtrl_famo.agents.sac import MultiTaskSAC
from mtrl_famo import balancers
from mtrl_famo.learner import BALANCED_LOSSES, SACLearner
from mtrl_famo.replay import TaskReplay

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "balancer"


def balancer_preset(name: str, seed: int) -> tuple[tuple[str, ...], dict]:
    """`apply_to` and options from the balancer's config file (`${seed}` resolved to `seed`)."""
    tree = OmegaConf.create({"seed": seed, "balancer": OmegaConf.load(CONFIG_DIR / f"{name}.yaml")})
    preset = OmegaConf.to_container(tree, resolve=True)["balancer"]
    return tuple(preset.get("apply_to") or ()), dict(preset.get("options") or {})


def make_learner(name: str, k: int, hidden: int, layers: int, device: torch.device, seed: int) -> tuple[SACLearner, TaskReplay]:
    torch.manual_seed(seed)
    obs_dim, action_dim = 39 + k, 4
    agent = MultiTaskSAC(obs_dim, action_dim, k, hidden_dim=hidden, num_layers=layers).to(device)
    applied, options = balancer_preset(name, seed)
    per_loss = {
        loss: (balancers.make(name, k, **options) if loss in applied else balancers.make("mtsac", k)).to(device)
        for loss in BALANCED_LOSSES
    }
    replay = TaskReplay(k, 1000, obs_dim, action_dim, device)
    for _ in range(1000):
        replay.add(
            obs=torch.randn(k, obs_dim), action=torch.rand(k, action_dim) * 2 - 1, reward=torch.randn(k),
            next_obs=torch.randn(k, obs_dim), terminated=torch.zeros(k),
        )
    return SACLearner(agent, per_loss), replay


def time_update(learner: SACLearner, replay: TaskReplay, batch: int, device: torch.device) -> float:
    sample = replay.sample(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    learner.update(sample)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def bench(k: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    names = args.balancers or list(balancers.NAMES)
    if "mtsac" not in names:
        names = ["mtsac", *names]
    setups = {name: make_learner(name, k, args.hidden, args.layers, device, args.seed) for name in names}
    for name, (learner, replay) in setups.items():
        for _ in range(args.warmup):
            time_update(learner, replay, args.batch, device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, (learner, replay) in setups.items():
            times[name].append(time_update(learner, replay, args.batch, device))
    base = statistics.median(times["mtsac"])
    return [
        {"balancer": name, "tasks": k, "ms": round(statistics.median(t), 2), "ratio_to_mtsac": round(statistics.median(t) / base, 3)}
        for name, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="*", default=[10, 50], help="K values to run (default: 10 50)")
    parser.add_argument("--balancers", nargs="*", default=None, help=f"subset of {', '.join(balancers.NAMES)}")
    parser.add_argument("--batch", type=int, default=128, help="transitions per task per update")
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20, help="timed updates per balancer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates per balancer first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per balancer instead of a table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.json:
        print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} batch/task={args.batch} "
              f"{args.layers}x{args.hidden} repeats={args.repeats}")
        print(f"{'K':>3} {'balancer':<8} {'ms/update':>10} {'x mtsac':>8}")
    for k in args.tasks:
        for row in bench(k, args, device):
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{row['tasks']:>3} {row['balancer']:<8} {row['ms']:>10.2f} {row['ratio_to_mtsac']:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
