"""Accept a GPU machine in one command (issue 21): at most 8 minutes on one GPU, one table, one JSON.

    python scripts/gpu_acceptance.py                              # writes gpu_acceptance.json here
    python scripts/gpu_acceptance.py --out runs/gpu.json --budget 420

In this order, each section within its share of `--budget` seconds (what does not fit is listed as
skipped, never silently dropped):

1. the CUDA tests: `pytest -m cuda` (tests/test_cuda.py: graph replay = eager over every cadence,
   compiled = eager, exact resume, background evaluation, memory check, host-side Gram solves, ...);
2. the update time of every balancer at K=10 and K=50 (scripts/bench_update.py's configs, builder and
   timer), each with the update the trainer would use: its speed layers self-checked (`build_update`);
3. `bench_train` end to end (scripts/bench_train.py's `measure`) for MT10 mtsac, famo and pcgrad with
   the eager, compiled and graphed update (pcgrad cannot be captured: no graphed row): vector steps
   per second and env / update / other ms per vector step;
4. the self-check's verdict for each layer of every learner built in 2 and 3;
5. a two-minute MT10 famo run through the CLI with its defaults (`python -m mtrl_famo.train env=mt10
   balancer=famo`, its `steps` sized from section 3's famo rate so the run ends in about two minutes;
   what it logged: perf/env_steps_per_s, perf/update_ms, the update it trained with).

Issue 21's targets are compared where a figure measures them. On a machine without CUDA the script
exits with status 2 and one sentence. Exit status 1 when a CUDA test fails or a section raised.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
UPDATE_TASKS = (10, 50)
TRAIN_BALANCERS = ("mtsac", "famo", "pcgrad")
# variant -> (agent.compile, agent.cuda_graph); "graph" is the default on CUDA: the graph over the compiled update
TRAIN_VARIANTS = {"eager": ("false", "false"), "compiled": ("true", "false"), "graph": ("auto", "true")}
# Shares of the budget (seconds of a 480 s budget); a section starts only with its share left.
SHARES = {"cuda_tests": 150, "update": 90, "bench_train": 100, "cli_run": 140}
CLI_SECONDS = 120  # the two-minute run's training time


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_acceptance.json"), help="the JSON file to write")
    parser.add_argument(
        "--budget", type=float, default=420.0, help="seconds in all (default 420: the last item may overrun its share)"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed updates per balancer in section 2")
    parser.add_argument("--steps", type=int, default=150, help="timed vector steps per bench_train row")
    args = parser.parse_args(argv)
    if not args.budget > 0:
        parser.exit(2, f"error: --budget must be a positive number of seconds, got {args.budget}.\n")
    if args.repeats < 1 or args.steps < 1:
        parser.exit(2, f"error: --repeats and --steps must be at least 1, got {args.repeats} and {args.steps}.\n")
    return args


class Clock:
    """The budget: how much is left, and whether a section's share still fits."""

    def __init__(self, budget: float):
        self.start, self.budget = time.monotonic(), budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def share(self, section: str) -> float:
        return SHARES[section] * self.budget / sum(SHARES.values())


def machine() -> dict[str, Any]:
    import os
    import platform

    props = torch.cuda.get_device_properties(0)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpus": torch.cuda.device_count(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


# ----- 1. the CUDA tests -------------------------------------------------------------------------
def cuda_tests(timeout: float) -> dict[str, Any]:
    import re
    import subprocess

    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"timed out after {timeout:.0f} s", "seconds": round(timeout)}
    lines = result.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else "(no output)"
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {
        "ok": result.returncode == 0,
        "summary": summary,
        "counts": counts,
        "failures": failures,
        "seconds": round(time.monotonic() - started, 1),
    }


# ----- 2. the update time of every balancer ------------------------------------------------------
def update_times(
    clock: Clock,
    deadline: float,
    repeats: int,
    device_name: str = "cuda",
    tasks: tuple[int, ...] = UPDATE_TASKS,
    sizes: dict[str, int | None] | None = None,
) -> tuple[list[dict], list[dict], list[str]]:
    """Median ms per update of every balancer (its self-checked update), interleaved round by round.
    `device_name`, `tasks` and `sizes` (hidden/layers/batch) exist for a dry run on a CPU."""
    import statistics

    sys.path.insert(0, str(REPO / "scripts"))
    from bench_update import bench_config, interleaved_ms, make_learner, time_ms

    from mtrl_famo import balancers
    from mtrl_famo.build import build_update

    device = torch.device(device_name)
    options = argparse.Namespace(
        device=device_name, seed=None, **{"hidden": None, "layers": None, "batch": None, **(sizes or {})}
    )
    rows, verdicts, skipped = [], [], []
    for k in tasks:
        timers = {}
        for name in ["mtsac", *(n for n in balancers.NAMES if n != "mtsac")]:
            if clock.left() < deadline:
                skipped.append(f"update time K={k} {name}")
                continue
            config = bench_config(name, k, options)
            learner, replay = make_learner(config, device)
            choice = build_update(config.agent, config.balancer, learner)
            verdicts += [{"where": f"update K={k}", "balancer": name, **vars(v)} for v in choice.verdicts]
            batch = config.agent.batch_size_per_task

            def timer(update=choice.update, replay=replay, batch=batch) -> float:
                sample = replay.sample(batch)
                return time_ms(lambda: update(sample), device)

            timers[name] = (timer, choice.used)
        if "mtsac" not in timers:
            continue
        times = interleaved_ms({name: timer for name, (timer, _) in timers.items()}, repeats, warmup=3)
        base = statistics.median(times["mtsac"])
        for name, values in times.items():
            ms = statistics.median(values)
            rows.append(
                {
                    "tasks": k,
                    "balancer": name,
                    "update": timers[name][1],
                    "ms": round(ms, 3),
                    "x_mtsac": round(ms / base, 2),
                }
            )
    return rows, verdicts, skipped


# ----- 3. bench_train end to end ---------------------------------------------------------------
def train_rows(
    clock: Clock, deadline: float, steps: int, device_name: str = "cuda", overrides: tuple[str, ...] = ()
) -> tuple[list[dict], list[dict], list[str]]:
    """bench_train's rows; `device_name` and `overrides` exist for a dry run on a CPU."""
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_train import bench_config, measure

    args = argparse.Namespace(
        env="mt10", device=device_name, warmup=50, skip=10, steps=steps, eval_every=None, overrides=list(overrides)
    )
    rows, verdicts, skipped = [], [], []
    for balancer in TRAIN_BALANCERS:
        for variant, (compile_, graph) in TRAIN_VARIANTS.items():
            if variant == "graph" and balancer == "pcgrad":
                continue  # not graph-safe: agent.cuda_graph=true is refused for it by design
            if clock.left() < deadline:
                skipped.append(f"bench_train mt10 {balancer} {variant}")
                continue
            row = measure(bench_config(args, balancer, None, compile_, None, graph), args)
            row["variant"] = variant
            rows.append(row)
            verdicts += [
                {"where": f"bench_train {variant}", "balancer": balancer, "layer": layer, "outcome": outcome}
                for layer, outcome in row["verdicts"].items()
            ]
    return rows, verdicts, skipped


# ----- 5. a two-minute MT10 famo run through the CLI ----------------------------------------------
def cli_run(rate: float | None, timeout: float, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """`python -m mtrl_famo.train env=mt10 balancer=famo` with its defaults, `steps` sized to about two
    minutes (`overrides` exist for a dry run on a CPU)."""
    import json
    import subprocess
    import tempfile

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mtrl_famo.config import compose
    from mtrl_famo.tags import ENV_STEPS_PER_S, UPDATE_LAYERS, UPDATE_MS

    warmup = compose("env=mt10", "balancer=famo", *overrides).agent.warmup_steps
    # bench_train's rate has no evaluation and no logging: aim at 100 s of it, for about two minutes in all.
    steps = warmup + int((rate or 100.0) * (CLI_SECONDS - 20))
    with tempfile.TemporaryDirectory(prefix="gpu_acceptance_") as run_dir:
        command = [sys.executable, "-m", "mtrl_famo.train", "env=mt10", "balancer=famo", f"steps={steps}", *overrides]
        started = time.monotonic()
        try:
            result = subprocess.run(
                [*command, f"run_dir={run_dir}", "progress=false"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            code, stderr = result.returncode, result.stderr
        except subprocess.TimeoutExpired as expired:
            code, stderr = "timeout", (expired.stderr or b"").decode(errors="replace")
        wall = time.monotonic() - started
        events = EventAccumulator(run_dir, size_guidance={"scalars": 0, "tensors": 0}).Reload()
        tags = events.Tags()
        rates = [e.value for e in events.Scalars(ENV_STEPS_PER_S)] if ENV_STEPS_PER_S in tags["scalars"] else []
        update_ms = [e.value for e in events.Scalars(UPDATE_MS)] if UPDATE_MS in tags["scalars"] else []
        text = f"{UPDATE_LAYERS}/text_summary"
        layers = events.Tensors(text)[0].tensor_proto.string_val[0].decode() if text in tags["tensors"] else None
        summary_file = Path(run_dir) / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    return {
        "command": " ".join(command),
        "returncode": code,
        "wall_s": round(wall, 1),
        "steps": steps,
        "env_steps": None if summary is None else summary["env_steps"],
        "eval_success_rate": None if summary is None else summary["eval_success_rate"],
        # Logged every log.every steps: the mean over the run after its warm-up (its first window holds the build).
        "env_steps_per_s": round(sum(rates[1:]) / len(rates[1:]), 1) if len(rates) > 1 else None,
        "update_ms": round(sum(update_ms) / len(update_ms), 3) if update_ms else None,
        "update": None if summary is None else summary["update"]["used"],
        "update_layers": layers,
        "stderr_tail": stderr.strip().splitlines()[-3:] if code != 0 else [],
    }


# ----- the table ---------------------------------------------------------------------------------
def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 21's targets, each with the figure that measures it (None: not measured by this run)."""
    update = {(r["tasks"], r["balancer"]): r for r in report.get("update_ms", [])}
    famo_train = next(
        (r for r in report.get("bench_train", []) if r["balancer"] == "famo" and r["variant"] == "graph"), None
    )
    worst = max((r["x_mtsac"] for r in report.get("update_ms", []) if r["tasks"] == 50), default=None)
    one_update = update.get((10, "famo"), {}).get("ms")
    cli = report.get("cli_run") or {}
    rows = [
        (
            "MT10 famo end to end (bench_train, graph, no eval)",
            famo_train and famo_train["steps_per_s"],
            ">= 400 steps/s",
            400,
            "min",
        ),
        (
            "MT10 famo end to end (the CLI's 2-min run, default eval)",
            cli.get("env_steps_per_s"),
            ">= 400 steps/s",
            400,
            "min",
        ),
        ("one MT10 famo update (K=10)", one_update, "<= 1.5 ms", 1.5, "max"),
        ("no balancer above 2x mtsac at K=50", worst, "<= 2.0x", 2.0, "max"),
        ("MT50 end to end", None, ">= 80 steps/s", 80, "min"),
    ]
    return [
        {
            "target": name,
            "value": value,
            "wanted": wanted,
            "met": None if value is None else (value >= bound if kind == "min" else value <= bound),
        }
        for name, value, wanted, bound, kind in rows
    ]


def print_table(report: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str]] = []
    tests = report.get("cuda_tests")
    if tests:
        rows.append(("cuda tests", "pytest -m cuda", f"{tests['summary']} ({tests['seconds']} s)"))
        rows += [("cuda tests", "failed", line) for line in tests.get("failures", [])]
    for r in report.get("update_ms", []):
        rows.append(
            (
                "update",
                f"K={r['tasks']} {r['balancer']} ({r['update']})",
                f"{r['ms']:.3f} ms  {r['x_mtsac']:.2f}x mtsac",
            )
        )
    for r in report.get("bench_train", []):
        rows.append(
            (
                "bench_train",
                f"mt10 {r['balancer']} {r['variant']} (ran: {r['update']})",
                f"{r['steps_per_s']:.1f} steps/s  env {r['env_ms']:.2f}  update {r['update_ms']:.2f}  "
                f"other {r['other_ms']:.2f} ms",
            )
        )
    grouped: dict[str, list[str]] = {}
    for v in report.get("self_check", []):  # one row per learner: each layer's outcome
        grouped.setdefault(f"{v['where']} {v['balancer']}", []).append(f"{v['layer']}: {v['outcome']}")
    rows += [("self-check", where, ", ".join(outcomes)) for where, outcomes in grouped.items()]
    cli = report.get("cli_run")
    if cli:
        rows.append(
            (
                "cli run",
                f"mt10 famo defaults, {cli['wall_s']} s, exit {cli['returncode']}",
                f"{cli['env_steps_per_s']} steps/s  update {cli['update_ms']} ms  ran: {cli['update']}",
            )
        )
    for t in report.get("targets", []):
        met = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
        rows.append(("target", t["target"], f"{t['value']} (want {t['wanted']}): {met}"))
    rows += [("skipped", item, "time budget") for item in report.get("skipped", [])]
    rows += [("error", section, message) for section, message in report.get("errors", {}).items()]
    width = [max(len(row[i]) for row in rows) for i in range(2)] if rows else [0, 0]
    print(f"GPU acceptance: {report['machine']['gpu']}, {report['machine']['date']}, {report['wall_s']} s")
    for section, item, value in rows:
        print(f"{section:<{width[0]}}  {item:<{width[1]}}  {value}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not torch.cuda.is_available():
        print(
            f"error: scripts/gpu_acceptance.py needs a CUDA device, but torch {torch.__version__} sees none on this "
            "machine (torch.cuda.is_available() is False); run it on a GPU node.",
            file=sys.stderr,
        )
        return 2
    import json

    clock = Clock(args.budget)
    report: dict[str, Any] = {"machine": machine(), "skipped": [], "errors": {}, "self_check": []}
    fixed = sum(clock.share(s) for s in ("update", "bench_train", "cli_run"))
    try:
        report["cuda_tests"] = cuda_tests(timeout=max(30.0, clock.left() - fixed))
    except Exception as error:
        report["errors"]["cuda tests"] = f"{type(error).__name__}: {error}"
    for section, run in (
        ("update", lambda deadline: update_times(clock, deadline, args.repeats)),
        ("bench_train", lambda deadline: train_rows(clock, deadline, args.steps)),
    ):
        # keep the later sections' shares: this one may use what is left above them
        later = sum(clock.share(s) for s in SHARES if list(SHARES).index(s) > list(SHARES).index(section))
        try:
            rows, verdicts, skipped = run(later)
            report["update_ms" if section == "update" else "bench_train"] = rows
            report["self_check"] += verdicts
            report["skipped"] += skipped
        except Exception as error:
            report["errors"][section] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
    famo = next((r for r in report.get("bench_train", []) if r["balancer"] == "famo" and r["variant"] == "graph"), None)
    if clock.left() >= CLI_SECONDS:
        try:
            report["cli_run"] = cli_run(famo and famo["steps_per_s"], timeout=max(CLI_SECONDS, clock.left() - 5))
        except Exception as error:
            report["errors"]["cli run"] = f"{type(error).__name__}: {error}"
    else:
        report["skipped"].append("the two-minute MT10 famo CLI run")
    report["targets"] = targets(report)
    report["wall_s"] = round(args.budget - clock.left(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    tests_ok = report.get("cuda_tests", {}).get("ok", False)
    return 0 if tests_ok and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
