"""The sweep report: real TensorBoard files in, numbers checked against independent computations."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.stats import trim_mean
from torch.utils.tensorboard import SummaryWriter

from mtrl_famo.report import (
    CURVES_PNG,
    PROTOCOL_KEYS,
    REPORT_JSON,
    REPORT_MD,
    ReportError,
    build_report,
    completion,
    compute_report,
    curve_label,
    read_config,
    read_scalars,
)

from conftest import TINY_RUN, run_cli, tb_scalars

TASKS = ["reach-v3", "push-v3", "pick-place-v3"]
STEPS, EVAL_EVERY = 300, 100
REPS = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----- writing runs the way the trainer does --------------------------------------------------
# A value other than write_config's for every protocol-defining setting; the keys are the settings
# the report must compare (written out here, so dropping one from report.PROTOCOL_KEYS fails a test).
OTHER_PROTOCOL = {
    "eval.protocol": "metaworld",
    "eval.episodes": 50,
    "eval.every": 50,
    "env.max_episode_steps": 150,
    "env.goals": "fixed",
    "env.reward_version": "v1",
    "env.reward_normalization": "running_std",
    "agent.heads": "shared",
    "agent.alpha": "shared",
    "agent.critic_layernorm": True,
    "agent.reset_every": 1000,
    "agent.reset": ["critic"],
    "agent.network": {"name": "moore", "num_experts": 6},
}
# A network other than write_config's is another group, not a protocol difference within one: for the
# warning, the group's runs share a network name and differ in its options.
WITHIN_GROUP = {"agent.network": ({"name": "moore", "num_experts": 4}, {"name": "moore", "num_experts": 6})}
# The keys a config.yaml written before the protocol was recorded lacks.
LEGACY_ABSENT = (
    "experiment",
    "eval.protocol",
    "env.goals",
    "env.reward_version",
    "env.reward_normalization",
    "agent.heads",
    "agent.alpha",
    "agent.init",
)


def write_config(
    run_dir: Path,
    env: str,
    balancer: str,
    seed: int,
    steps: int = STEPS,
    tasks=TASKS,
    experiment: str = "none",
    settings: dict | None = None,
    absent: tuple[str, ...] = (),
    network: str = "multihead",
) -> None:
    """config.yaml with the trainer's structure (the resolved Hydra config, saved with OmegaConf).

    `settings` overrides dotted keys (e.g. {"eval.protocol": "metaworld"}); `absent` names
    dotted keys to leave out (e.g. LEGACY_ABSENT: a config from before the protocol keys existed);
    `network` is agent.network.name (a network with options: settings={"agent.network": {...}}).
    """
    cfg = OmegaConf.create(
        {
            "env": {
                "name": env,
                "tasks": list(tasks),
                "one_hot": True,
                "vector_strategy": "sync",
                "max_episode_steps": 40,
                "goals": "random",
                "reward_version": "v2",
                "reward_normalization": "none",
            },
            "agent": {
                "heads": "per_task",
                "alpha": "per_task",
                "init": "pytorch",
                "hidden_dim": 32,
                "num_layers": 2,
                "batch_size_per_task": 16,
                "warmup_steps": 40,
                "critic_layernorm": False,
                "reset_every": 0,
                "reset": ["actor", "critic"],
                "network": {"name": network},
            },
            "balancer": {"name": balancer, "apply_to": ["critic"], "options": {}},
            "experiment": experiment,
            "seed": seed,
            "device": "auto",
            "steps": steps,
            "run_dir": str(run_dir),
            "progress": False,
            "eval": {"every": EVAL_EVERY, "episodes": 10, "protocol": "any_success"},
            "log": {"every": 20, "conflicts_every": 5},
            "checkpoint": {"every": 50000},
        }
    )
    for key, value in (settings or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    for key in absent:
        parent, _, leaf = key.rpartition(".")
        del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def write_events(
    run_dir: Path, evals: dict[int, list[float]], wall0: float, order: int, tasks=TASKS, purge_step: int | None = None
) -> None:
    """One event file with the trainer's eval tags; `order` fixes the file name's sort position."""
    staging = run_dir / f"staging{order}"
    writer = SummaryWriter(log_dir=str(staging), purge_step=purge_step)
    for i, (step, per_task) in enumerate(sorted(evals.items())):
        wall = wall0 + i
        writer.add_scalar("eval/success_rate", float(np.mean(per_task)), step, walltime=wall)
        writer.add_scalar("eval/return", 100.0 * float(np.mean(per_task)), step, walltime=wall)
        for task, value in zip(tasks, per_task):
            writer.add_scalar(f"eval/success_rate/{task}", value, step, walltime=wall)
        writer.add_scalar("loss/critic", 1.0 / step, step, walltime=wall)
    writer.close()
    (event_file,) = staging.glob("events.out.tfevents.*")
    event_file.rename(run_dir / f"events.out.tfevents.{1700000000 + order:010d}.node.4242.{order}")
    staging.rmdir()


def write_summary(run_dir: Path, steps: int, final: list[float], tasks=TASKS) -> None:
    """The trainer's completion marker."""
    summary = {
        "env_steps": steps,
        "steps": steps,
        "complete": True,
        "eval_success_rate": float(np.mean(final)),
        "eval_success_rate_per_task": dict(zip(tasks, final)),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def random_evals(
    rng: np.random.Generator, steps=range(EVAL_EVERY, STEPS + 1, EVAL_EVERY), tasks=TASKS
) -> dict[int, list[float]]:
    """Success rates as 10-episode evaluations produce them (multiples of 0.1)."""
    return {step: list(rng.integers(0, 11, size=len(tasks)) / 10) for step in steps}


def make_sweep(root: Path) -> dict:
    """A sweep with known numbers; returns what was written, keyed by (env, balancer, seed)."""
    rng = np.random.default_rng(123)
    written: dict[tuple[str, str, int], dict[int, list[float]]] = {}

    def complete_run(env: str, balancer: str, seed: int, evals: dict[int, list[float]], run_dir: Path | None = None):
        run_dir = run_dir or root / env / balancer / f"seed={seed}"
        write_config(run_dir, env, balancer, seed)
        write_events(run_dir, evals, wall0=1000.0, order=0)
        write_summary(run_dir, STEPS, evals[STEPS])
        written[(env, balancer, seed)] = evals

    for seed in range(4):  # famo: 4 plain seeds + the resumed one below = 5
        complete_run("custom", "famo", seed, random_evals(rng))
    for seed in range(3):
        complete_run("custom", "mtsac", seed, random_evals(rng))
    # A resumed run in a path that says nothing about it: two event files sharing step 200.
    resumed = root / "requeued" / "job_17"
    first, second = random_evals(rng, steps=[100, 200]), random_evals(rng, steps=[200, 300])
    write_config(resumed, "custom", "famo", 4)
    write_events(resumed, first, wall0=1000.0, order=1)
    write_events(resumed, second, wall0=5000.0, order=2)
    write_summary(resumed, STEPS, second[STEPS])
    written[("custom", "famo", 4)] = {100: first[100], 200: second[200], 300: second[300]}
    (resumed / ".hydra").mkdir()
    (resumed / ".hydra" / "config.yaml").write_text("seed: ${oc.env:NOPE}\n")  # Hydra's copy: not a run
    # An incomplete mtsac seed: last eval at 200 of 300, no marker.
    incomplete = root / "custom" / "mtsac" / "seed=3"
    write_config(incomplete, "custom", "mtsac", 3)
    write_events(incomplete, random_evals(rng, steps=[100, 200]), wall0=1000.0, order=0)
    # A second env: one seed (degenerate CI) and two identical seeds.
    solo_tasks = ["reach-v3"]
    for balancer, seeds in (("cagrad", [0]), ("pcgrad", [0, 1])):
        for seed in seeds:
            run_dir = root / "mt1" / balancer / f"seed={seed}"
            evals = {100: [0.3], 200: [0.6], 300: [0.5]}
            write_config(run_dir, "mt1", balancer, seed, tasks=solo_tasks)
            write_events(run_dir, evals, wall0=1000.0, order=0, tasks=solo_tasks)
            write_summary(run_dir, STEPS, evals[STEPS], tasks=solo_tasks)
            written[("mt1", balancer, seed)] = evals
    return written


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("multirun")
    written = make_sweep(root)
    before = snapshot(root)
    report = build_report(root, reps=REPS, seed=0)
    return root, written, report, before


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def group(report: dict, env: str, balancer: str, experiment: str = "none", network: str = "multihead") -> dict:
    (match,) = [
        g
        for g in report["groups"]
        if (g["experiment"], g["env"], g["network"], g["balancer"]) == (experiment, env, network, balancer)
    ]
    return match


def expected(written: dict, env: str, balancer: str, seeds) -> dict[str, np.ndarray]:
    final = np.array([np.mean(written[(env, balancer, s)][STEPS]) for s in seeds])
    best = np.array([max(np.mean(v) for v in written[(env, balancer, s)].values()) for s in seeds])
    per_task = np.array([written[(env, balancer, s)][STEPS] for s in seeds]).mean(axis=0)
    return {"final": final, "best": best, "per_task": per_task}


# ----- numbers --------------------------------------------------------------------------------
@pytest.mark.parametrize("balancer, seeds", [("famo", range(5)), ("mtsac", range(3))])
def test_means_match_the_values_written(sweep, balancer, seeds):
    _, written, report, _ = sweep
    row, want = group(report, "custom", balancer), expected(written, "custom", balancer, seeds)
    assert row["seeds_complete"] == list(seeds) and row["n_complete"] == len(seeds)
    assert row["final_success"]["point"] == pytest.approx(want["final"].mean(), abs=1e-6)
    assert row["best_success"]["point"] == pytest.approx(want["best"].mean(), abs=1e-6)
    assert row["final_success_per_task"] == pytest.approx(dict(zip(TASKS, want["per_task"])), abs=1e-6)
    for name in ("final_success", "final_success_iqm", "best_success"):
        low, high = row[name]["ci"]
        assert low <= row[name]["point"] <= high
    assert row["steps"] == [STEPS]


def test_iqm_is_the_interquartile_mean_over_seeds(sweep):
    _, written, report, _ = sweep
    row = group(report, "custom", "famo")
    final = expected(written, "custom", "famo", range(5))["final"]
    assert len(final) >= 4 and np.ptp(final) > 0
    assert row["final_success_iqm"]["point"] == pytest.approx(trim_mean(final, 0.25), abs=1e-6)
    assert not row["final_success_iqm"]["degenerate"]
    low, high = row["final_success"]["ci"]
    assert low < high and final.min() - 1e-9 <= low and high <= final.max() + 1e-9


def test_intervals_agree_with_an_independent_bootstrap(sweep):
    """The CI of the mean over seeds is scipy's percentile bootstrap, up to resampling noise."""
    from scipy.stats import bootstrap

    _, written, report, _ = sweep
    row = group(report, "custom", "famo")
    final = expected(written, "custom", "famo", range(5))["final"]
    reference = bootstrap(
        (final,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95, rng=np.random.default_rng(1)
    ).confidence_interval
    width = reference.high - reference.low
    assert width > 0.05
    assert row["final_success"]["ci"] == [
        pytest.approx(reference.low, abs=0.1 * width),
        pytest.approx(reference.high, abs=0.1 * width),
    ]
    curve = row["curve"]
    last = curve["steps"].index(STEPS)
    assert [curve["ci_low"][last], curve["ci_high"][last]] == pytest.approx(row["final_success"]["ci"], abs=0.1 * width)


def test_single_seed_and_identical_seeds_give_degenerate_intervals(sweep):
    _, _, report, _ = sweep
    for balancer, seeds in (("cagrad", [0]), ("pcgrad", [0, 1])):
        row = group(report, "mt1", balancer)
        assert row["seeds_complete"] == seeds
        for name in ("final_success", "final_success_iqm"):
            assert row[name] == {"point": pytest.approx(0.5), "ci": [pytest.approx(0.5)] * 2, "degenerate": True}
        assert row["best_success"]["point"] == pytest.approx(0.6) and row["best_success"]["degenerate"]


def test_incomplete_run_is_listed_and_excluded(sweep):
    root, written, report, _ = sweep
    (entry,) = report["incomplete"]
    assert (entry["env"], entry["balancer"], entry["seed"]) == ("custom", "mtsac", 3)
    assert (entry["last_step"], entry["steps"], entry["complete"]) == (200, STEPS, False)
    row = group(report, "custom", "mtsac")
    assert (row["n_complete"], row["n_runs"], row["seeds_incomplete"]) == (3, 4, [3])
    assert row["final_success"]["point"] == pytest.approx(
        expected(written, "custom", "mtsac", range(3))["final"].mean()
    )
    markdown = (root / REPORT_MD).read_text()
    assert "3 of 4 seeds complete" in markdown and "200 / 300" in markdown


def test_resumed_run_merges_files_and_keeps_the_last_value_of_a_repeated_step(sweep):
    root, written, report, _ = sweep
    run_dir = root / "requeued" / "job_17"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    series = read_scalars(run_dir)["eval/success_rate"]
    want = written[("custom", "famo", 4)]
    assert series.steps.tolist() == [100, 200, 300]
    assert series.values.tolist() == pytest.approx([np.mean(want[s]) for s in (100, 200, 300)], abs=1e-6)
    (record,) = [r for r in report["runs"] if r["run_dir"] == str(run_dir)]
    assert (record["env"], record["network"], record["balancer"], record["seed"]) == ("custom", "multihead", "famo", 4)
    assert record["complete"]
    assert len(report["runs"]) == 5 + 4 + 3  # the .hydra/config.yaml copy is no run
    assert report["skipped"] == [] and report["warnings"] == []


def test_trainer_style_resume_hides_what_the_interrupted_attempt_logged_after_its_checkpoint(tmp_path):
    # Attempt 1 logged evals at 100 and 150, checkpointed at 100 and died; attempt 2 resumed with
    # purge_step=101 (as the trainer does) and logged 200. TensorBoard drops step 150; so does the report.
    write_config(tmp_path, "custom", "famo", 0, steps=200)
    write_events(tmp_path, {100: [0.1, 0.1, 0.1], 150: [0.9, 0.9, 0.9]}, wall0=1000.0, order=0)
    write_events(tmp_path, {200: [0.4, 0.4, 0.4]}, wall0=2000.0, order=1, purge_step=101)
    series = read_scalars(tmp_path)["eval/success_rate"]
    assert series.steps.tolist() == [100, 200] and series.values.tolist() == pytest.approx([0.1, 0.4])


def test_curves_are_mean_over_seeds_at_common_steps(sweep):
    _, written, report, _ = sweep
    curve = group(report, "custom", "famo")["curve"]
    assert curve["steps"] == [100, 200, 300]
    for i, step in enumerate(curve["steps"]):
        values = [np.mean(written[("custom", "famo", s)][step]) for s in range(5)]
        assert curve["mean"][i] == pytest.approx(np.mean(values), abs=1e-6)
        assert min(values) - 1e-9 <= curve["ci_low"][i] <= curve["mean"][i] <= curve["ci_high"][i] <= max(values) + 1e-9


# ----- files ----------------------------------------------------------------------------------
MAIN_HEADER = "| experiment | env | network | balancer | protocol | steps | seeds |"


def main_table(markdown: str) -> list[list[str]]:
    """The cells of the main table's rows (up to its blank line)."""
    lines = markdown.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(MAIN_HEADER))) + 2
    return [[cell.strip() for cell in row.split("|")[1:-1]] for row in lines[start : lines.index("", start)]]


def test_markdown_has_one_row_per_experiment_env_network_and_balancer_with_the_json_numbers(sweep):
    root, _, report, _ = sweep
    markdown = (root / REPORT_MD).read_text()
    rows = main_table(markdown)
    assert [tuple(row[:6]) for row in rows] == [
        ("none", "custom", "multihead", "famo", "any_success, 10 episodes", str(STEPS)),
        ("none", "custom", "multihead", "mtsac", "any_success, 10 episodes", str(STEPS)),
        ("none", "mt1", "multihead", "cagrad", "any_success, 10 episodes", str(STEPS)),
        ("none", "mt1", "multihead", "pcgrad", "any_success, 10 episodes", str(STEPS)),
    ]
    famo = group(report, "custom", "famo")
    low, high = famo["final_success"]["ci"]
    assert f"{100 * famo['final_success']['point']:.1f} [{100 * low:.1f}, {100 * high:.1f}]" in rows[0][7]
    assert rows[2][7] == "50.0 [50.0, 50.0] (degenerate)"
    assert "## Final success per task: custom, experiment none" in markdown
    per_task_row = next(line for line in markdown.splitlines() if line.startswith("| multihead | famo |"))
    for task in TASKS:
        assert f"{100 * famo['final_success_per_task'][task]:.1f}" in per_task_row
    assert json.loads((root / REPORT_JSON).read_text()) == report


# ----- experiments and protocols --------------------------------------------------------------
# write_config's protocol (the defaults of experiment=none with the test's eval.every and episode length).
DEFAULT_PROTOCOL = {
    "eval.protocol": "any_success",
    "eval.episodes": 10,
    "eval.every": EVAL_EVERY,
    "env.max_episode_steps": 40,
    "env.goals": "random",
    "env.reward_version": "v2",
    "env.reward_normalization": "none",
    "agent.heads": "per_task",
    "agent.alpha": "per_task",
    "agent.critic_layernorm": False,
    "agent.reset_every": 0,
    "agent.reset": ["actor", "critic"],
    "agent.network": {"name": "multihead"},
}


def recorded(value):
    """A setting as the report records it: a nested value (the network section, agent.reset) as its JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


# The presets' protocol settings (configs/experiment/*.yaml), eval.every left at the test's.
PRESETS = {
    "cagrad_paper": {
        "eval.episodes": 1,
        "env.max_episode_steps": 150,
        "env.goals": "fixed",
        "env.reward_normalization": "running_std",
        "agent.heads": "shared",
        "agent.alpha": "shared",
    },
    "metaworld_plus": {"eval.protocol": "metaworld", "eval.episodes": 50, "env.max_episode_steps": 500},
}


def write_complete_run(run_dir: Path, seed: int, rng: np.random.Generator, **config) -> float:
    """A finished custom/famo run with random evals; returns its final mean success."""
    evals = random_evals(rng)
    write_config(run_dir, "custom", "famo", seed, **config)
    write_events(run_dir, evals, wall0=1000.0, order=0)
    write_summary(run_dir, STEPS, evals[STEPS])
    return float(np.mean(evals[STEPS]))


def test_protocol_keys_are_the_protocol_defining_settings():
    assert set(PROTOCOL_KEYS) == set(OTHER_PROTOCOL) == set(DEFAULT_PROTOCOL)
    assert all(OTHER_PROTOCOL[key] != DEFAULT_PROTOCOL[key] for key in PROTOCOL_KEYS)


def test_runs_of_different_experiments_are_separate_groups_that_say_their_protocol(tmp_path):
    rng = np.random.default_rng(7)
    seeds = {"none": [0, 1, 2], "cagrad_paper": [0, 1], "metaworld_plus": [0]}
    finals = {
        experiment: [
            write_complete_run(
                tmp_path / experiment / f"seed={seed}",
                seed,
                rng,
                experiment=experiment,
                settings=PRESETS.get(experiment),
            )
            for seed in experiment_seeds
        ]
        for experiment, experiment_seeds in seeds.items()
    }
    # Precondition: pooling any two experiments would change their means.
    assert len({round(float(np.mean(values)), 6) for values in finals.values()}) == 3
    report = build_report(tmp_path, reps=REPS)
    keys = [(g["experiment"], g["env"], g["network"], g["balancer"]) for g in report["groups"]]
    assert keys == [
        ("cagrad_paper", "custom", "multihead", "famo"),
        ("metaworld_plus", "custom", "multihead", "famo"),
        ("none", "custom", "multihead", "famo"),
    ]
    for experiment, experiment_seeds in seeds.items():
        row = group(report, "custom", "famo", experiment)
        assert row["seeds_complete"] == experiment_seeds
        assert row["final_success"]["point"] == pytest.approx(np.mean(finals[experiment]), abs=1e-6)
        want = {**DEFAULT_PROTOCOL, **PRESETS.get(experiment, {})}
        assert row["protocol"] == {key: [recorded(value)] for key, value in want.items()}
        assert (row["eval_protocol"], row["eval_episodes"]) == ([want["eval.protocol"]], [want["eval.episodes"]])
        assert row["protocol_consistent"] is True
    # Seed 0 of each experiment is no duplicate, and nothing differs within a group.
    assert report["warnings"] == []
    assert {(r["experiment"], r["seed"]) for r in report["runs"]} == {(e, s) for e in seeds for s in seeds[e]}
    markdown = (tmp_path / REPORT_MD).read_text()
    assert [row[:5] for row in main_table(markdown)] == [
        ["cagrad_paper", "custom", "multihead", "famo", "any_success, 1 episodes"],
        ["metaworld_plus", "custom", "multihead", "famo", "metaworld, 50 episodes"],
        ["none", "custom", "multihead", "famo", "any_success, 10 episodes"],
    ]
    for experiment in seeds:
        assert f"## Final success per task: custom, experiment {experiment}" in markdown
    assert "predate" not in markdown


@pytest.mark.parametrize("key", sorted(OTHER_PROTOCOL))
def test_a_protocol_setting_that_differs_within_a_group_is_warned(tmp_path, key):
    rng = np.random.default_rng(11)
    usual, other = WITHIN_GROUP.get(key, (DEFAULT_PROTOCOL[key], OTHER_PROTOCOL[key]))
    for seed in (0, 1, 2):
        settings = {key: other if seed == 1 else usual}
        write_complete_run(tmp_path / f"seed={seed}", seed, rng, experiment="cagrad_paper", settings=settings)
    report = build_report(tmp_path, reps=REPS)
    (row,) = report["groups"]
    assert row["experiment"] == "cagrad_paper" and row["seeds_complete"] == [0, 1, 2]
    assert sorted(map(str, row["protocol"][key])) == sorted(map(str, map(recorded, [usual, other])))
    assert row["protocol_consistent"] is False
    (warning,) = report["warnings"]
    assert warning.startswith(f"cagrad_paper/custom/{row['network']}/famo: ") and f" {key} (" in warning
    assert f"{recorded(usual)}: seeds 0, 2" in warning and f"{recorded(other)}: seed 1" in warning
    markdown = (tmp_path / REPORT_MD).read_text()
    (table_row,) = main_table(markdown)
    assert table_row[4].endswith("(mixed: see warnings)")
    if key in ("eval.protocol", "eval.episodes"):
        assert "any_success/metaworld" in table_row[4] or "10/50 episodes" in table_row[4]
    assert f"- {warning}" in markdown


def test_configs_of_an_older_version_are_skipped_and_unrecorded_settings_are_not_guessed(tmp_path):
    rng = np.random.default_rng(3)
    # Without experiment / eval.protocol: a config of an older version, skipped with one sentence.
    write_complete_run(tmp_path / "old" / "seed=9", 9, rng, absent=LEGACY_ABSENT)
    with pytest.raises(ReportError, match=r"lacks experiment: it was written by an older version of mtrl_famo"):
        read_config(tmp_path / "old" / "seed=9")
    # With them but without the later protocol keys: those read as not recorded (None), never guessed.
    unrecorded = ["env.goals", "env.reward_version", "env.reward_normalization", "agent.heads", "agent.alpha"]
    for seed in (0, 1):
        write_complete_run(tmp_path / "partial" / f"seed={seed}", seed, rng, absent=(*unrecorded, "agent.init"))
    config = read_config(tmp_path / "partial" / "seed=0")
    assert (config.experiment, config.protocol["eval.protocol"]) == ("none", "any_success")
    assert config.protocol["eval.episodes"] == 10 and config.protocol["env.goals"] is None
    report = build_report(tmp_path, reps=REPS)
    (row,) = report["groups"]
    assert row["seeds_complete"] == [0, 1] and report["warnings"] == []
    assert [skipped["run_dir"] for skipped in report["skipped"]] == [str(tmp_path / "old" / "seed=9")]
    assert "older version" in report["skipped"][0]["reason"]
    # A run that records them joins the group; the settings the others never recorded are said to differ.
    write_complete_run(tmp_path / "new" / "seed=2", 2, rng)
    report = compute_report(tmp_path, reps=REPS)
    (row,) = report["groups"]
    assert row["seeds_complete"] == [0, 1, 2] and row["eval_protocol"] == ["any_success"]
    assert len(report["warnings"]) == len(unrecorded)
    for key, warning in zip(sorted(unrecorded, key=PROTOCOL_KEYS.index), report["warnings"]):
        assert f" {key} (" in warning and "not recorded: seeds 0, 1" in warning
        assert f"{DEFAULT_PROTOCOL[key]}: seed 2" in warning


def test_runs_of_two_networks_are_two_groups_named_by_their_network(tmp_path):
    """The network comes from each run's config.yaml (a path may say nothing, or something else)."""
    rng = np.random.default_rng(5)
    moore = {"name": "moore", "num_experts": 4}
    finals = {
        "multihead": [
            write_complete_run(tmp_path / "custom" / "multihead" / "famo" / f"seed={seed}", seed, rng)
            for seed in (0, 1, 2)
        ],
        # Filed under a path that names the other network: the report must not believe it.
        "moore": [
            write_complete_run(
                tmp_path / "misfiled" / "multihead" / f"seed={seed}",
                seed,
                rng,
                network="moore",
                settings={"agent.network": moore},
            )
            for seed in (0, 1, 2)
        ],
    }
    incomplete = tmp_path / "custom" / "moore" / "famo" / "seed=3"
    write_config(incomplete, "custom", "famo", 3, settings={"agent.network": moore})
    write_events(incomplete, random_evals(rng, steps=[100]), wall0=1000.0, order=0)
    # Precondition: pooling the two networks would change both means.
    assert round(float(np.mean(finals["multihead"])), 6) != round(float(np.mean(finals["moore"])), 6)
    report = build_report(tmp_path, reps=REPS)
    keys = [(g["experiment"], g["env"], g["network"], g["balancer"]) for g in report["groups"]]
    assert keys == [("none", "custom", "moore", "famo"), ("none", "custom", "multihead", "famo")]
    for network, values in finals.items():
        row = group(report, "custom", "famo", network=network)
        assert row["seeds_complete"] == [0, 1, 2]
        assert row["final_success"]["point"] == pytest.approx(np.mean(values), abs=1e-6)
        assert row["protocol"]["agent.network"] == [recorded(moore if network == "moore" else {"name": network})]
        assert row["protocol_consistent"] is True
        assert curve_label(row).startswith(f"{network}/famo, any_success, 10 episodes (n=3)")
    assert group(report, "custom", "famo", network="moore")["seeds_incomplete"] == [3]
    assert report["warnings"] == []  # one seed per network is no duplicate; the network is no mismatch
    assert {(r["network"], r["seed"], r["complete"]) for r in report["runs"]} == {
        *(("multihead", seed, True) for seed in (0, 1, 2)),
        *(("moore", seed, True) for seed in (0, 1, 2)),
        ("moore", 3, False),
    }
    markdown = (tmp_path / REPORT_MD).read_text()
    assert [row[:5] for row in main_table(markdown)] == [
        ["none", "custom", "moore", "famo", "any_success, 10 episodes"],
        ["none", "custom", "multihead", "famo", "any_success, 10 episodes"],
    ]
    lines = markdown.splitlines()
    assert "| network | balancer | pick-place-v3 | push-v3 | reach-v3 |" in lines
    assert any(line.startswith("| moore | famo | ") for line in lines)
    assert any(line.startswith("| multihead | famo | ") for line in lines)
    assert any(line.startswith("| none | custom | moore | famo | 3 | 100 / 300 |") for line in lines)


def test_a_config_without_the_network_is_skipped_as_an_older_version(tmp_path):
    rng = np.random.default_rng(4)
    write_complete_run(tmp_path / "no-network", 0, rng, absent=("agent.network",))
    write_complete_run(tmp_path / "good", 0, rng)
    with pytest.raises(ReportError, match=r"lacks agent\.network\.name: it was written by an older version"):
        read_config(tmp_path / "no-network")
    report = compute_report(tmp_path, reps=REPS)
    assert [r["run_dir"] for r in report["runs"]] == [str(tmp_path / "good")]
    (skipped,) = report["skipped"]
    assert skipped["run_dir"] == str(tmp_path / "no-network") and "agent.network.name" in skipped["reason"]


def test_png_is_written_and_nothing_else_changes(sweep):
    root, _, _, before = sweep
    assert (root / CURVES_PNG).read_bytes()[:8] == PNG_MAGIC
    after = snapshot(root)
    assert set(after) - set(before) == {REPORT_MD, REPORT_JSON, CURVES_PNG}
    assert {k: after[k] for k in before} == before


def run_report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "mtrl_famo.report", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_writes_into_out_dir(sweep, tmp_path):
    root, _, report, _ = sweep
    result = run_report(str(root), "--out", str(tmp_path / "out"), "--reps", str(REPS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / REPORT_JSON).read_text())["groups"] == report["groups"]
    assert (tmp_path / "out" / CURVES_PNG).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_cli_bad_sweep_dir_exits_2_with_one_sentence(tmp_path, case):
    target = tmp_path / "nope"
    if case == "empty":
        target.mkdir()
        (target / "notes.txt").write_text("no runs here\n")
    result = run_report(str(target), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0] and "Traceback" not in result.stderr
    assert "expected" in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["nope", "notes.txt"] if case == "empty" else [])


def test_compute_report_refuses_a_sweep_without_runs(tmp_path):
    with pytest.raises(ReportError, match="No runs found"):
        compute_report(tmp_path)


# ----- a real tiny sweep through the training CLI ---------------------------------------------


def test_report_of_a_real_tiny_sweep_matches_its_event_files(tmp_path):
    sweep_dir = tmp_path / "multirun"
    result = run_cli(
        "-m",
        *TINY_RUN,
        "eval.every=20",  # six evaluations per run: the scripted values rise and fall (precondition below)
        "balancer=mtsac",
        "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        scripted_success=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = build_report(sweep_dir, reps=REPS)
    row = group(report, "custom", "mtsac")
    assert row["seeds_complete"] == [0, 1] and report["incomplete"] == []
    # The trainer's config.yaml records every protocol setting where the report reads it.
    assert (row["experiment"], row["eval_protocol"], row["eval_episodes"]) == ("none", ["any_success"], [1])
    assert row["protocol"]["env.max_episode_steps"] == [40] and row["protocol"]["eval.every"] == [20]
    assert all(len(values) == 1 and values[0] is not None for values in row["protocol"].values())
    assert report["warnings"] == []
    runs = sweep_dir / "custom" / "multihead" / "mtsac"  # the default layout: <env>/<network>/<balancer>/seed=<n>
    data = [tb_scalars(runs / f"seed={seed}", ("eval/success_rate",)) for seed in (0, 1)]
    final = [d["eval/success_rate"][-1] for d in data]
    # Precondition (tests/hooks scripts success from the real returns): final, best, first, per-task
    # and per-seed values differ, so a report that mixed them up could not match.
    per_task_final = [d[f"eval/success_rate/{task}"][-1][1] for d in data for task in ("reach-v3", "push-v3")]
    assert len(set(per_task_final)) > 1
    assert any(max(v for _, v in d["eval/success_rate"]) != d["eval/success_rate"][-1][1] for d in data)
    assert len({v for _, v in final}) > 1
    assert [step for step, _ in final] == [120, 120]
    assert row["final_success"]["point"] == pytest.approx(np.mean([v for _, v in final]))
    assert row["best_success"]["point"] == pytest.approx(
        np.mean([max(v for _, v in d["eval/success_rate"]) for d in data])
    )
    for task in ("reach-v3", "push-v3"):
        want = np.mean([d[f"eval/success_rate/{task}"][-1][1] for d in data])
        assert row["final_success_per_task"][task] == pytest.approx(want)
    assert row["curve"]["steps"] == [20, 40, 60, 80, 100, 120]


@pytest.mark.parametrize(
    "last_step, marker, complete",
    [
        (300, {"steps": 300, "complete": True}, True),
        (300, None, True),  # final eval logged, marker not yet written: the data is all there
        (200, None, False),
        (None, None, False),
        (120, {"steps": 120, "complete": True}, False),  # marker of an earlier, shorter request: stale
        (300, {"steps": 300, "complete": False}, False),
    ],
)
def test_completion_prefers_a_current_marker_and_needs_the_final_eval(last_step, marker, complete):
    assert completion(last_step, 300, marker)[0] is complete


def test_unreadable_run_is_listed_not_dropped(sweep, tmp_path):
    root, _, _, _ = sweep
    shutil.copytree(root / "mt1" / "cagrad" / "seed=0", tmp_path / "good")
    shutil.copytree(root / "mt1" / "cagrad" / "seed=0", tmp_path / "broken")
    (tmp_path / "broken" / "config.yaml").write_text("env: [\n")
    report = compute_report(tmp_path, reps=REPS)
    assert [s["run_dir"] for s in report["skipped"]] == [str(tmp_path / "broken")]
    assert [r["run_dir"] for r in report["runs"]] == [str(tmp_path / "good")]
    shutil.rmtree(tmp_path / "good")
    with pytest.raises(ReportError, match="could be read"):
        compute_report(tmp_path)
