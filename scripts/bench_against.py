"""Milliseconds per multitask SAC update: this working tree against a git revision, interleaved.

    python scripts/bench_against.py --rev HEAD --threads 1
    python scripts/bench_against.py --rev HEAD --threads 2 --balancers mtsac famo pcgrad cagrad

Why two processes: the old code and the new one define the same modules, so each lives in its own
worker process: this tree's scripts/bench_harness.py, run as a script, once on this tree and once
on the revision (extracted with `git archive` and laid out as installed, first on PYTHONPATH; the
worker checks it imported that copy). So both sides build their learners with the same builder
(same seeds, same configs as scripts/bench_update.py) and time them with the same timer
(scripts/bench_timing.py), which needs the revision's `mtrl_famo.config.compose` and
`mtrl_famo.build` to take what this tree's harness passes. The parent asks the workers for one
update at a time, round-robin over (balancer, revision), so both sides see the same machine load;
the medians and their ratio come from that one run. Wall and process-CPU milliseconds are both
reported: on a shared machine with one thread the CPU time ignores waiting for a busy core (with
several threads it also counts OpenMP's spinning).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from bench_harness import worker_arguments
from bench_timing import interleaved_ms

REPO = Path(__file__).resolve().parent.parent
HARNESS = Path(__file__).resolve().parent / "bench_harness.py"
# Where each installed package lives in the repository (pyproject's package-dir).
PACKAGE_DIRS = {
    "mtrl_famo": "mtrl_famo",
    "mtrl_famo/agents": "agents",
    "mtrl_famo/envs": "envs",
    "mtrl_famo/configs": "configs",
}


def extract(rev: str, into: Path) -> Path:
    """The revision's packages laid out as installed (mtrl_famo/agents, ...) plus its configs/."""
    archive = into / "tree"
    archive.mkdir()
    tar = subprocess.run(
        ["git", "archive", rev, "mtrl_famo", "agents", "envs", "configs"], cwd=REPO, capture_output=True
    )
    if tar.returncode != 0:
        raise SystemExit(f"error: git archive {rev} failed: {tar.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(archive)], input=tar.stdout, check=True)
    site = into / "site"
    for package, source in PACKAGE_DIRS.items():
        shutil.copytree(archive / source, site / package, dirs_exist_ok=True)
    shutil.copytree(archive / "configs", site / "configs")  # where revisions before mtrl_famo.configs look
    return site


def start_worker(python_path: Path | None, arguments: list[str], threads: int) -> subprocess.Popen:
    """A bench_harness.py worker on this tree (`python_path` None) or on the packages under `python_path`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    isolated = []
    if python_path is not None:
        env["PYTHONPATH"] = str(python_path)
        isolated = ["--isolated"]
    worker = subprocess.Popen(
        [sys.executable, str(HARNESS), *arguments, *isolated],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=python_path or REPO,
    )
    ready = worker.stdout.readline().split()
    if not ready or ready[0] != "ready":
        raise SystemExit("error: a benchmark worker failed to start (see its traceback above).")
    expected = python_path if python_path is not None else REPO
    if not ready[1].startswith(str(expected)):  # the revision must not silently import the working tree
        raise SystemExit(f"error: the worker imported {ready[1]}, not the code under {expected}.")
    return worker


def one_update(worker: subprocess.Popen, name: str) -> tuple[float, float]:
    """Wall and process-CPU milliseconds of one update (CPU time ignores waiting for a busy core)."""
    worker.stdin.write(name + "\n")
    worker.stdin.flush()
    wall, cpu = worker.stdout.readline().split()
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD", help="git revision to compare against (default: HEAD)")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--balancers", nargs="*", default=["mtsac", "famo", "pcgrad", "cagrad"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="timed updates per balancer and side")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    arguments = worker_arguments(args.tasks, args.balancers, args.hidden, args.layers, args.batch, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workers = {
            "old": start_worker(extract(args.rev, Path(tmp)), arguments, args.threads),
            "new": start_worker(None, arguments, args.threads),
        }
        timers = {(name, side): partial(one_update, workers[side], name) for name in args.balancers for side in workers}
        times = interleaved_ms(timers, args.repeats, args.warmup)
        for worker in workers.values():
            worker.stdin.close()
            worker.wait()
    print(f"K={args.tasks} threads={args.threads} repeats={args.repeats} old={args.rev} new=working tree")
    print(f"{'balancer':<10} {'old ms':>8} {'new ms':>8} {'speedup':>8} {'old cpu':>8} {'new cpu':>8} {'speedup':>8}")
    for name in args.balancers:
        (old, old_cpu), (new, new_cpu) = (
            (statistics.median(t[0] for t in times[(name, side)]), statistics.median(t[1] for t in times[(name, side)]))
            for side in ("old", "new")
        )
        wall = f"{old:>8.1f} {new:>8.1f} {old / new:>7.2f}x"
        cpu = f"{old_cpu:>8.1f} {new_cpu:>8.1f} {old_cpu / new_cpu:>7.2f}x"
        print(f"{name:<10} {wall} {cpu}", flush=True)


if __name__ == "__main__":
    main()
