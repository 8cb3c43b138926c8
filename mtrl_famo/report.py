"""Sweep report: compare balancers and networks across seeds from the runs' own TensorBoard files.

`python -m mtrl_famo.report <sweep dir> [--out DIR] [--reps N] [--seed S]` finds every run under
the sweep directory (a directory holding the trainer's `config.yaml` and event files), reads the
eval success-rate scalars with TensorBoard's own reader (so the report shows what TensorBoard
shows, including the purge of steps an interrupted attempt logged after its last checkpoint),
and writes `report.md`, `report.json` and `success_curves.png` into `--out` (default: the sweep
directory). Nothing else is written, moved or deleted.

What a run is (experiment, env, network, balancer, seed, requested steps and its protocol) comes
from its saved config, never from the path. Runs are grouped by (experiment, env, network, balancer):
`experiment` is the preset the run was launched with (configs/experiment/<name>.yaml, e.g. none,
cagrad_paper), `network` the actor's and critics' network (`agent.network.name`, the agent/network
group: multihead, moore, ...). Every group, in report.md and report.json, says its experiment and
evaluation protocol (`eval.protocol` and `eval.episodes` per task); a group whose runs differ in any
protocol-defining setting (PROTOCOL_KEYS) gets a warning naming the setting and which seeds have
which value, since its numbers then average different protocols (`agent.network` is one of them:
runs of one network with different options, e.g. agent.network.num_experts, are warned about). Only
complete runs enter the aggregates; incomplete ones are listed with how far they got.

A config.yaml without `experiment`, `eval.protocol` or `agent.network.name` (REQUIRED_KEYS) comes
from an older version of mtrl_famo and is not read: its run is listed as skipped with that reason,
never filled in with a guess. Other protocol settings a config lacks (env.goals, agent.heads, ...)
read as not recorded (null), and a group mixing them with recorded values is warned about like any
other difference.

Confidence intervals are 95% percentile bootstraps over seeds from rliable's stratified bootstrap
(`get_interval_estimates`, seeded so a report is reproducible): each seed's number is its mean
success over tasks, so seeds are resampled with replacement in one stratum. The learning-curve
bands are the same estimate at every eval step. With one seed, or identical values, the interval
is the point itself and is marked degenerate.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from mtrl_famo.atomic import atomic_output, write_text_atomic
from mtrl_famo.config import keys_with_role
from mtrl_famo.run_files import CONFIG_FILE, SUMMARY_FILE
from mtrl_famo.tags import EVAL_SUCCESS

EVENTS_PREFIX = "events.out.tfevents."  # TensorBoard event files
TASK_PREFIX = f"{EVAL_SUCCESS}/"
REPORT_MD, REPORT_JSON, CURVES_PNG = "report.md", "report.json", "success_curves.png"
CONFIDENCE = 0.95
DEFAULT_REPS = 2000

# Settings that define what a success rate means (how it was trained for and measured): runs of one
# group that differ in any of them are warned about. Dotted paths into the saved config.yaml: the
# schema's `protocol` role (mtrl_famo.config).
PROTOCOL_KEYS = keys_with_role("protocol")
# Keys every config.yaml of this version records; a config without them is of an older version (not read).
REQUIRED_KEYS = ("experiment", "eval.protocol", "agent.network.name")


class ReportError(ValueError):
    """Bad input for a report, told in one sentence (the CLI exits with status 2)."""


# ----- data -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """One scalar tag: strictly increasing steps and their values."""

    steps: np.ndarray
    values: np.ndarray

    def at(self, step: int) -> float | None:
        """The value logged at `step` (None if that step was not logged)."""
        hits = np.flatnonzero(self.steps == step)
        return float(self.values[hits[-1]]) if hits.size else None


@dataclass
class RunRecord:
    """One training run as the report sees it."""

    run_dir: Path
    experiment: str  # the preset (configs/experiment/) the run was launched with
    env: str
    network: str  # agent.network.name: the actor's and critics' network (configs/agent/network/)
    balancer: str
    seed: int
    steps: int  # requested environment steps per task (from the saved config)
    protocol: dict[str, Any]  # PROTOCOL_KEYS -> value (None: not recorded in the config)
    success: Series  # eval/success_rate: mean over tasks per eval step
    task_success: dict[str, Series]  # eval/success_rate/<task>
    complete: bool
    reason: str  # why it counts as complete or not, for the report

    @property
    def last_step(self) -> int | None:
        return int(self.success.steps[-1]) if self.success.steps.size else None

    @property
    def final_success(self) -> float | None:
        return float(self.success.values[-1]) if self.success.values.size else None

    @property
    def best_success(self) -> float | None:
        return float(self.success.values.max()) if self.success.values.size else None

    def final_task_success(self) -> dict[str, float]:
        """Each task's success at the run's last eval step (the step of the final mean)."""
        out: dict[str, float] = {}
        for task, series in self.task_success.items():
            value = series.at(self.last_step) if self.last_step is not None else None
            if value is None and series.values.size:
                value = float(series.values[-1])
            if value is not None:
                out[task] = value
        return out


@dataclass(frozen=True)
class Skipped:
    """A directory that looked like a run but could not be read; listed, never silently dropped."""

    run_dir: Path
    reason: str


@dataclass(frozen=True)
class Estimate:
    """A point estimate over seeds and its 95% bootstrap interval."""

    point: float | None
    low: float | None
    high: float | None
    degenerate: bool  # True when the interval collapses to the point (1 seed, identical values)

    def to_json(self) -> dict[str, Any]:
        ci = None if self.low is None else [self.low, self.high]
        return {"point": self.point, "ci": ci, "degenerate": self.degenerate}


EMPTY = Estimate(None, None, None, True)


# ----- reading runs ---------------------------------------------------------------------------
def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Directories with a saved config and event files (Hydra's `.hydra/` copies have no events)."""
    found = []
    for root, dirs, files in os.walk(sweep_dir):
        dirs.sort()
        if CONFIG_FILE in files and any(name.startswith(EVENTS_PREFIX) for name in files):
            found.append(Path(root))
    return found


def dedupe_last(events: Sequence[Any]) -> Series:
    """Keep one value per step, the one written last (largest wall_time); a resumed run may repeat steps."""
    latest: dict[int, tuple[float, float]] = {}
    for event in events:
        step, wall, value = int(event.step), float(event.wall_time), float(event.value)
        if step not in latest or wall >= latest[step][0]:
            latest[step] = (wall, value)
    steps = sorted(latest)
    return Series(np.array(steps, dtype=np.int64), np.array([latest[s][1] for s in steps], dtype=np.float64))


def read_scalars(run_dir: Path, tags: Callable[[str], bool] = lambda tag: True) -> dict[str, Series]:
    """All scalar tags of a run directory, every event file merged, by TensorBoard's own reader.

    Loading the directory (not file by file) keeps TensorBoard's purge semantics: a resumed run's
    writer marks its restart step, and what the interrupted attempt logged after it is dropped.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: dedupe_last(accumulator.Scalars(tag)) for tag in accumulator.Tags()["scalars"] if tags(tag)}


@dataclass(frozen=True)
class RunConfig:
    """What the report reads from a run's saved config."""

    experiment: str
    env: str
    network: str  # agent.network.name
    balancer: str
    seed: int
    steps: int
    protocol: dict[str, Any]  # PROTOCOL_KEYS -> value, None where the config does not record it


_ABSENT = object()


def _lookup(cfg: Any, dotted: str) -> Any:
    """The value at a dotted path of a nested dict, or _ABSENT."""
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return _ABSENT
        cfg = cfg[part]
    return cfg


def _scalar(value: Any) -> Any:
    """A config value as a hashable, JSON-ready scalar (a nested value becomes its JSON text)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, sort_keys=True)


def read_config(run_dir: Path) -> RunConfig:
    """Experiment, env, network, balancer, seed, requested steps and protocol settings from the saved config.

    A config without `experiment`, `eval.protocol` or `agent.network.name` (REQUIRED_KEYS) is of an older
    version: ReportError in one sentence. Any other protocol setting it lacks reads as None (not recorded),
    never as a guess. The network is read from here, never from the run's path.
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE), resolve=False)
    try:
        env, balancer = str(cfg["env"]["name"]), str(cfg["balancer"]["name"])
        seed, steps = int(cfg["seed"]), int(cfg["steps"])
    except (KeyError, TypeError, ValueError) as error:
        raise ReportError(
            f"{run_dir / CONFIG_FILE} lacks env.name, balancer.name, seed or steps ({error!r})."
        ) from None
    missing = [key for key in REQUIRED_KEYS if _lookup(cfg, key) is _ABSENT]
    if missing:
        raise ReportError(
            f"{run_dir / CONFIG_FILE} lacks {missing[0]}: it was written by an older version of mtrl_famo, whose "
            "runs this version does not read."
        )
    values = {}
    for key in ("experiment", *PROTOCOL_KEYS):
        value = _lookup(cfg, key)
        values[key] = None if value is _ABSENT else _scalar(value)
    experiment = str(values.pop("experiment"))
    network = str(_lookup(cfg, "agent.network.name"))
    return RunConfig(experiment, env, network, balancer, seed, steps, values)


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    """The trainer's summary.json (written once a run reaches its steps), or None."""
    path = run_dir / SUMMARY_FILE
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def completion(last_step: int | None, requested: int, marker: dict[str, Any] | None) -> tuple[bool, str]:
    """Decide whether a run finished, preferring the trainer's explicit marker.

    The trainer evaluates at exactly `steps` and then writes summary.json, so a finished run has
    both. A marker of an earlier, shorter request (the run was relaunched with more steps) is
    stale and ignored; the eval steps must reach the request in every case.
    """
    if last_step is None:
        return False, "no eval/success_rate logged yet"
    if last_step < requested:
        return False, f"last eval at step {last_step} of {requested}"
    if marker is not None and marker.get("steps") == requested:
        if marker.get("complete") is True:
            return True, f"{SUMMARY_FILE} says complete"
        return False, f"{SUMMARY_FILE} says incomplete"
    return True, f"final eval at step {last_step} reached the requested {requested} (no current {SUMMARY_FILE})"


def load_run(run_dir: Path) -> RunRecord:
    """Read one run's config, completion marker and eval success scalars."""
    config = read_config(run_dir)
    scalars = read_scalars(run_dir, lambda tag: tag == EVAL_SUCCESS or tag.startswith(TASK_PREFIX))
    empty = Series(np.zeros(0, dtype=np.int64), np.zeros(0))
    success = scalars.pop(EVAL_SUCCESS, empty)
    tasks = {tag.removeprefix(TASK_PREFIX): series for tag, series in scalars.items()}
    last = int(success.steps[-1]) if success.steps.size else None
    complete, reason = completion(last, config.steps, read_marker(run_dir))
    return RunRecord(
        run_dir,
        config.experiment,
        config.env,
        config.network,
        config.balancer,
        config.seed,
        config.steps,
        config.protocol,
        success,
        tasks,
        complete,
        reason,
    )


def discover_runs(sweep_dir: Path) -> tuple[list[RunRecord], list[Skipped]]:
    """Every run under `sweep_dir`; unreadable ones come back as Skipped with the reason."""
    runs, skipped = [], []
    for run_dir in find_run_dirs(sweep_dir):
        try:
            runs.append(load_run(run_dir))
        except Exception as error:
            skipped.append(Skipped(run_dir, " ".join(f"{type(error).__name__}: {error}".split())))
    return runs, skipped


# ----- statistics -----------------------------------------------------------------------------
def _column_mean(scores: np.ndarray) -> np.ndarray:
    """Mean over seeds of each column (eval step); `scores` is rliable's `[runs, tasks, columns]`."""
    return scores.reshape(-1, scores.shape[-1]).mean(axis=0)


def _column_iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean over seeds of each column, as rliable's `aggregate_iqm` (25% trimmed each side)."""
    return np.atleast_1d(stats.trim_mean(scores.reshape(-1, scores.shape[-1]), 0.25, axis=0))


STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mean": _column_mean, "iqm": _column_iqm}


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean of one number per seed."""
    return float(_column_iqm(np.asarray(values, dtype=np.float64)[:, None, None])[0])


def interval_estimates(
    per_seed: np.ndarray, statistic: str, reps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and 95% CI of `statistic` ('mean' or 'iqm') over seeds, for each column.

    `per_seed` is `[seeds, columns]` (one column for a final number, one per eval step for a
    curve). rliable's stratified percentile bootstrap resamples seeds; the score of a seed is
    already its mean over tasks, so there is one stratum. Seeded, so a report is reproducible.
    """
    from rliable import library

    scores = np.asarray(per_seed, dtype=np.float64)[:, None, :]
    func = STATISTICS[statistic]
    point = func(scores)
    if scores.shape[0] == 1:
        return point, point.copy(), point.copy()
    # rliable 1.2 draws its resamples from numpy's global RNG whatever `random_state` says: seed
    # that for the call and give the caller's state back afterwards.
    caller_state = np.random.get_state()
    np.random.seed(seed)
    try:
        _, intervals = library.get_interval_estimates(
            {"x": scores}, func, reps=reps, confidence_interval_size=CONFIDENCE
        )
    finally:
        np.random.set_state(caller_state)
    low, high = np.asarray(intervals["x"], dtype=np.float64).reshape(2, -1)
    return point, low, high


def estimate(values: Sequence[float], statistic: str, reps: int, seed: int) -> Estimate:
    """One number per seed in, its `statistic` over seeds and the 95% interval out."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return EMPTY
    point, low, high = (float(v[0]) for v in interval_estimates(x[:, None], statistic, reps, seed))
    return Estimate(point, low, high, degenerate=bool(low == high))


def common_curve(runs: Sequence[RunRecord], reps: int, seed: int) -> dict[str, list]:
    """Mean success and its band at the eval steps that every run of the group logged."""
    steps = functools.reduce(np.intersect1d, [run.success.steps for run in runs])
    if steps.size == 0:
        return {"steps": [], "mean": [], "ci_low": [], "ci_high": []}
    matrix = np.array([[run.success.at(int(s)) for s in steps] for run in runs], dtype=np.float64)
    mean, low, high = interval_estimates(matrix, "mean", reps, seed)
    return {"steps": [int(s) for s in steps], "mean": mean.tolist(), "ci_low": low.tolist(), "ci_high": high.tolist()}


# ----- the report -----------------------------------------------------------------------------
def _run_json(run: RunRecord) -> dict[str, Any]:
    return {
        "experiment": run.experiment,
        "env": run.env,
        "network": run.network,
        "balancer": run.balancer,
        "seed": run.seed,
        "steps": run.steps,
        "last_step": run.last_step,
        "complete": run.complete,
        "reason": run.reason,
        "final_success": run.final_success,
        "best_success": run.best_success,
        "protocol": dict(run.protocol),
        "run_dir": str(run.run_dir),
    }


def _distinct(values: Iterable[Any]) -> list[Any]:
    """Distinct values in a stable order (None, 'not recorded', last) for JSON and messages."""
    return sorted(set(values), key=lambda v: (v is None, str(type(v)), v if v is not None else 0))


GroupKey = tuple[str, str, str, str]  # (experiment, env, network, balancer)


def group_label(key: GroupKey) -> str:
    """'experiment/env/network/balancer', as warnings name a group."""
    return "/".join(key)


def summarise_group(key: GroupKey, runs: Sequence[RunRecord], reps: int, seed: int) -> dict[str, Any]:
    """One experiment × env × network × balancer row: statistics over its complete seeds only.

    `protocol` holds every PROTOCOL_KEYS setting as the list of values its runs used (one value
    when they agree); `eval_protocol` and `eval_episodes` repeat the evaluation's two for the table.
    """
    experiment, env, network, balancer = key
    done = sorted((run for run in runs if run.complete), key=lambda run: run.seed)
    final = [run.final_success for run in done]
    best = [run.best_success for run in done]
    per_task: dict[str, list[float]] = {}
    for run in done:
        for task, value in run.final_task_success().items():
            per_task.setdefault(task, []).append(value)
    protocol = {name: _distinct(run.protocol[name] for run in runs) for name in PROTOCOL_KEYS}
    return {
        "experiment": experiment,
        "env": env,
        "network": network,
        "balancer": balancer,
        "eval_protocol": protocol["eval.protocol"],
        "eval_episodes": protocol["eval.episodes"],
        "protocol": protocol,
        "protocol_consistent": all(len(values) == 1 for values in protocol.values()),
        "steps": sorted({run.steps for run in runs}),
        "n_complete": len(done),
        "n_runs": len(runs),
        "seeds_complete": [run.seed for run in done],
        "seeds_incomplete": sorted(run.seed for run in runs if not run.complete),
        "final_success": estimate(final, "mean", reps, seed).to_json(),
        "final_success_iqm": estimate(final, "iqm", reps, seed).to_json(),
        "best_success": estimate(best, "mean", reps, seed).to_json(),
        "final_success_per_task": {task: float(np.mean(values)) for task, values in per_task.items()},
        "curve": common_curve(done, reps, seed) if done else {"steps": [], "mean": [], "ci_low": [], "ci_high": []},
    }


def _shown(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def consistency_warnings(groups: dict[GroupKey, list[RunRecord]]) -> list[str]:
    """Things that make a group's seeds not comparable: said aloud, not averaged over silently.

    A protocol setting (PROTOCOL_KEYS) that differs between runs of a group is warned about
    whether or not the runs are complete yet: once they are, their numbers are averaged together.
    """
    warnings = []
    for key, members in sorted(groups.items()):
        label = group_label(key)
        seeds = [run.seed for run in members]
        for seed in sorted({s for s in seeds if seeds.count(s) > 1}):
            dirs = ", ".join(str(run.run_dir) for run in members if run.seed == seed)
            warnings.append(f"{label}: seed {seed} appears in several runs ({dirs}).")
        for name in PROTOCOL_KEYS:
            values = _distinct(run.protocol[name] for run in members)
            if len(values) > 1:
                seeds_of = {
                    value: [str(run.seed) for run in members if run.protocol[name] == value] for value in values
                }
                detail = "; ".join(
                    f"{_shown(value)}: seed{'s' if len(seeds_of[value]) > 1 else ''} {', '.join(seeds_of[value])}"
                    for value in values
                )
                warnings.append(
                    f"{label}: runs differ in the protocol setting {name} ({detail}); numbers from protocols "
                    "that differ (or are not known to match) are averaged together in this group."
                )
        done = [run for run in members if run.complete]
        if len({run.steps for run in done}) > 1:
            warnings.append(
                f"{label}: complete seeds requested different steps "
                f"({sorted({run.steps for run in done})}); their final numbers are averaged together."
            )
        if len({tuple(sorted(run.task_success)) for run in done}) > 1:
            warnings.append(f"{label}: complete seeds logged different task sets.")
    return warnings


def compute_report(sweep_dir: Path | str, reps: int = DEFAULT_REPS, seed: int = 0) -> dict[str, Any]:
    """The report's content (what report.json holds), without writing anything."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(
            f"Sweep directory {sweep_dir} does not exist; expected a directory holding runs "
            f"(each a {CONFIG_FILE} and TensorBoard event files)."
        )
    if reps < 1:
        raise ReportError(f"--reps={reps} is invalid; it must be a positive integer.")
    runs, skipped = discover_runs(sweep_dir.resolve())
    if not runs and skipped:
        raise ReportError(
            f"None of the {len(skipped)} run directories under {sweep_dir} could be read "
            f"(first: {skipped[0].run_dir}: {skipped[0].reason}); expected each to hold the "
            f"trainer's {CONFIG_FILE} and TensorBoard event files."
        )
    if not runs:
        raise ReportError(
            f"No runs found under {sweep_dir}; expected directories holding a {CONFIG_FILE} and "
            f"TensorBoard event files ({EVENTS_PREFIX}*)."
        )
    runs.sort(key=lambda run: (run.experiment, run.env, run.network, run.balancer, run.seed, str(run.run_dir)))
    groups: dict[GroupKey, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.experiment, run.env, run.network, run.balancer), []).append(run)
    rows = [summarise_group(key, members, reps, seed) for key, members in sorted(groups.items())]
    return {
        "sweep_dir": str(sweep_dir.resolve()),
        "units": "success rates are fractions in [0, 1]; steps are environment steps per task",
        "ci": {
            "method": "rliable.library.get_interval_estimates (stratified percentile bootstrap over seeds)",
            "confidence": CONFIDENCE,
            "reps": reps,
            "seed": seed,
        },
        "groups": rows,
        "incomplete": [_run_json(run) for run in runs if not run.complete],
        "runs": [_run_json(run) for run in runs],
        "skipped": [{"run_dir": str(s.run_dir), "reason": s.reason} for s in skipped],
        "warnings": consistency_warnings(groups),
    }


# ----- rendering ------------------------------------------------------------------------------
def pct(value: float | None) -> str:
    """A success fraction as percent with one decimal ('—' when there is none)."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def format_estimate(estimate: dict[str, Any]) -> str:
    """'45.0 [40.1, 49.9]'; a collapsed interval is labelled as such."""
    if estimate["point"] is None:
        return "—"
    low, high = estimate["ci"]
    text = f"{pct(estimate['point'])} [{pct(low)}, {pct(high)}]"
    return f"{text} (degenerate)" if estimate["degenerate"] else text


def format_seeds(group: dict[str, Any]) -> str:
    """'3', or 'n of m seeds complete' when some seeds have not finished."""
    if group["n_complete"] == group["n_runs"]:
        return str(group["n_complete"])
    return f"{group['n_complete']} of {group['n_runs']} seeds complete"


def format_protocol(group: dict[str, Any]) -> str:
    """'any_success, 10 episodes'; every value seen when runs differ, and '(mixed)' for any difference."""
    names = "/".join(_shown(v) for v in group["eval_protocol"])
    episodes = "/".join(_shown(v) for v in group["eval_episodes"])
    text = f"{names}, {episodes} episodes"
    return text if group["protocol_consistent"] else f"{text} (mixed: see warnings)"


def _relative(path: str, root: str) -> str:
    """A run directory as seen from the sweep directory (absolute if it lies elsewhere)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """report.md, built from the report dict so that it shows exactly report.json's numbers."""
    ci = report["ci"]
    lines = [
        f"# Sweep report: {report['sweep_dir']}",
        "",
        "Eval success rate in percent (mean over tasks, `eval/success_rate`), over complete seeds only. "
        "Final = last evaluation of each run; best = maximum over its evaluations; IQM = interquartile mean "
        f"over seeds. Brackets: {int(100 * ci['confidence'])}% bootstrap CI over seeds ({ci['method']}, "
        f"{ci['reps']} resamples, seed {ci['seed']}).",
    ]
    lines.append("")
    header = [
        "experiment",
        "env",
        "network",
        "balancer",
        "protocol",
        "steps",
        "seeds",
        "final success",
        "final IQM",
        "best success",
    ]
    rows = [
        [
            g["experiment"],
            g["env"],
            g["network"],
            g["balancer"],
            format_protocol(g),
            ", ".join(map(str, g["steps"])),
            format_seeds(g),
            format_estimate(g["final_success"]),
            format_estimate(g["final_success_iqm"]),
            format_estimate(g["best_success"]),
        ]
        for g in report["groups"]
    ]
    lines += _table(header, rows)
    for experiment, env in sorted({(g["experiment"], g["env"]) for g in report["groups"]}):
        groups = [g for g in report["groups"] if (g["experiment"], g["env"]) == (experiment, env)]
        tasks = sorted({task for g in groups for task in g["final_success_per_task"]})
        if not tasks:
            continue
        lines += ["", f"## Final success per task: {env}, experiment {experiment}", ""]
        lines += _table(
            ["network", "balancer", *tasks],
            [[g["network"], g["balancer"], *(pct(g["final_success_per_task"].get(t)) for t in tasks)] for g in groups],
        )
    if report["incomplete"]:
        lines += ["", "## Incomplete runs (excluded from the tables above)", ""]
        lines += _table(
            ["experiment", "env", "network", "balancer", "seed", "last eval step / requested", "why", "run dir"],
            [
                [
                    r["experiment"],
                    r["env"],
                    r["network"],
                    r["balancer"],
                    r["seed"],
                    f"{'—' if r['last_step'] is None else r['last_step']} / {r['steps']}",
                    r["reason"],
                    _relative(r["run_dir"], report["sweep_dir"]),
                ]
                for r in report["incomplete"]
            ],
        )
    if report["skipped"]:
        lines += ["", "## Unreadable run directories (skipped)", ""]
        lines += _table(
            ["run dir", "why"], [[_relative(s["run_dir"], report["sweep_dir"]), s["reason"]] for s in report["skipped"]]
        )
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    lines += [
        "",
        f"Curves: `{CURVES_PNG}` (mean over seeds with the {int(100 * ci['confidence'])}% band, at eval "
        "steps common to all complete seeds of a group).",
        "",
    ]
    return "\n".join(lines)


def curve_label(group: dict[str, Any]) -> str:
    """A group's legend entry: 'network/balancer, protocol (n=complete seeds)'."""
    return f"{group['network']}/{group['balancer']}, {format_protocol(group)} (n={group['n_complete']})"


def render_curves(report: dict[str, Any]) -> bytes:
    """success_curves.png: one subplot per experiment × env, one curve + band per network × balancer (Agg, no
    pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = sorted({(g["experiment"], g["env"]) for g in report["groups"]})
    figure = Figure(figsize=(6 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (experiment, env) in zip(axes, panels):
        plotted = False
        for group in (g for g in report["groups"] if (g["experiment"], g["env"]) == (experiment, env)):
            curve = group["curve"]
            if not curve["steps"]:
                continue
            steps = np.asarray(curve["steps"])
            (line,) = ax.plot(
                steps,
                100 * np.asarray(curve["mean"]),
                marker="o",
                markersize=3,
                label=curve_label(group),
            )
            ax.fill_between(
                steps,
                100 * np.asarray(curve["ci_low"]),
                100 * np.asarray(curve["ci_high"]),
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
            plotted = True
        ax.set_title(f"{env}, experiment {experiment}")
        ax.set_xlabel("environment steps per task")
        ax.set_ylabel("eval success rate (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def build_report(
    sweep_dir: Path | str, out_dir: Path | str | None = None, reps: int = DEFAULT_REPS, seed: int = 0
) -> dict[str, Any]:
    """Compute the report and write report.md, report.json and success_curves.png atomically into
    `out_dir` (default: the sweep directory); returns what report.json holds."""
    report = compute_report(sweep_dir, reps, seed)
    out = Path(sweep_dir if out_dir is None else out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(
            f"Output path {out} is not a directory; expected a directory for {REPORT_MD}, "
            f"{REPORT_JSON} and {CURVES_PNG}."
        )
    png = render_curves(report)
    with atomic_output(out / CURVES_PNG) as handle:
        handle.write(png)
    write_text_atomic(out / REPORT_MD, render_markdown(report))
    write_text_atomic(out / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mtrl_famo.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="directory holding the runs (e.g. multirun/)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="bootstrap resamples (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the report and print where; bad input → one sentence on stderr, status 2."""
    args = parse_args(argv)
    try:
        report = build_report(args.sweep_dir, args.out, args.reps, args.seed)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dir
    complete = sum(g["n_complete"] for g in report["groups"])
    print(
        f"report: {len(report['groups'])} experiment×env×network×balancer groups, {complete} complete runs, "
        f"{len(report['incomplete'])} incomplete; wrote {out / REPORT_MD}, {out / REPORT_JSON}, {out / CURVES_PNG}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
