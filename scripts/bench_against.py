"""Milliseconds per multitask SAC update: this working tree against a git revision, interleaved.

    python scripts/bench_against.py --rev HEAD --threads 1
    python scripts/bench_against.py --rev HEAD --threads 2 --balancers mtsac famo pcgrad cagrad

Why two processes: the old code and the new one define the same modules, so each lives in its own
worker process (the revision is extracted with `git archive` and put first on PYTHONPATH). The
parent asks the workers for one update at a time, round-robin over (balancer, revision), so both
sides see the same machine load; the medians and their ratio come from that one run. Each worker
builds the learners exactly as scripts/bench_update.py does (same seeds, same configs). Wall and
process-CPU milliseconds are both reported: on a shared machine with one thread the CPU time
ignores waiting for a busy core (with several threads it also counts OpenMP's spinning).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where each installed package lives in the repository (pyproject's package-dir).
PACKAGE_DIRS = {
    "mtrl_famo": "mtrl_famo",
    "mtrl_famo/agents": "agents",
    "mtrl_famo/envs": "envs",
    "mtrl_famo/configs": "configs",
}

WORKER = r"""
import json, sys, time, argparse, torch
spec = json.loads(sys.argv[1])
if spec["isolated"]:  # drop the editable install's finder, which maps mtrl_famo.* to the working tree
    sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, {scripts!r})
from bench_update import bench_config, make_learner
torch.set_num_threads(spec["threads"])
args = argparse.Namespace(seed=None, hidden=spec["hidden"], layers=spec["layers"], batch=spec["batch"], device="cpu")
setups = {{}}
for name in spec["balancers"]:
    config = bench_config(name, spec["tasks"], args)
    learner, replay = make_learner(config, torch.device("cpu"))
    setups[name] = (learner, replay, config.agent.batch_size_per_task)
import mtrl_famo.agents
print("ready", mtrl_famo.agents.__file__, flush=True)
for line in sys.stdin:
    learner, replay, batch = setups[line.strip()]
    sample = replay.sample(batch)
    start, start_cpu = time.perf_counter(), time.process_time()
    learner.update(sample)
    print((time.perf_counter() - start) * 1e3, (time.process_time() - start_cpu) * 1e3, flush=True)
"""


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


def start_worker(python_path: Path | None, spec: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    if python_path is not None:
        env["PYTHONPATH"] = str(python_path)
    code = WORKER.format(scripts=str(REPO / "scripts"))
    spec = {**spec, "isolated": python_path is not None}
    worker = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=python_path or REPO,  # `python -c` puts the working directory first on sys.path
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
    spec = {key: getattr(args, key) for key in ("tasks", "balancers", "batch", "hidden", "layers", "threads")}
    with tempfile.TemporaryDirectory() as tmp:
        workers = {"old": start_worker(extract(args.rev, Path(tmp)), spec), "new": start_worker(None, spec)}
        times: dict[tuple[str, str], list[tuple[float, float]]] = {(n, s): [] for n in args.balancers for s in workers}
        for round_ in range(args.warmup + args.repeats):
            for name in args.balancers:
                for side, worker in workers.items():
                    elapsed = one_update(worker, name)
                    if round_ >= args.warmup:
                        times[(name, side)].append(elapsed)
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
