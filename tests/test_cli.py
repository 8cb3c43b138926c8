"""End to end through the real CLI: TensorBoard files, determinism, bad-input errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from mtrl_famo.balancers import NAMES
from mtrl_famo.config import ConfigError
from mtrl_famo.preflight import SUBMITIT_PLUGIN, check_run_dir

from conftest import TINY_RUN, cli_in_process, run_cli, tb_scalars


@pytest.fixture(scope="module")
def tiny_run(tiny_cli_run):
    cwd, result = tiny_cli_run("famo")
    return cwd / "runs" / "custom" / "multihead" / "famo" / "seed=0", result


def test_run_writes_tensorboard_with_success_tags(tiny_run):
    run_dir, _ = tiny_run
    data = tb_scalars(run_dir)
    assert [step for step, _ in data["eval/success_rate"]] == [60, 120]
    for task in ("reach-v3", "push-v3"):
        assert [step for step, _ in data[f"eval/success_rate/{task}"]] == [60, 120]
        assert f"eval/return/{task}" in data and f"alpha/{task}" in data
        assert f"balancer/weight/{task}" in data
    for tag in (
        "train/success_rate",
        "loss/critic",
        "loss/actor",
        "loss/alpha",
        "perf/env_steps_per_s",
        "perf/update_ms",
    ):
        assert tag in data, tag
    assert [step for step, _ in data["loss/critic"]] == [60, 80, 100, 120]  # learning starts after warm-up
    assert all(0.0 <= value <= 1.0 for _, value in data["eval/success_rate"])


def test_run_saves_resolved_config_and_summary(tiny_run):
    run_dir, _ = tiny_run
    config = (run_dir / "config.yaml").read_text()
    assert "name: famo" in config and "${" not in config
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 120 and summary["complete"]


def test_default_run_dir_is_deterministic(tiny_cli_run):
    cwd, result = tiny_cli_run("mtsac")  # no run_dir given: runs/<env>/<network>/<balancer>/seed=<n>
    assert sorted(str(p.relative_to(cwd)) for p in cwd.glob("runs/*/*/*/*")) == ["runs/custom/multihead/mtsac/seed=0"]
    assert (cwd / "runs" / "custom" / "multihead" / "mtsac" / "seed=0" / "summary.json").exists()
    assert "run dir runs/custom/multihead/mtsac/seed=0" in result.stdout


@pytest.mark.slow
def test_a_network_sweep_gives_each_network_its_own_run_dir_and_report_group(tmp_path):
    """`-m agent/network=multihead,moore`: one job per network, none refused as another run's checkpoint
    (the sweep sub-directory names the network), and the report groups them by network."""
    sweep = tmp_path / "multirun"
    result = run_cli(
        "-m",
        *TINY_RUN,
        "steps=60",
        "agent/network=multihead,moore",
        "balancer=mtsac",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for network in ("multihead", "moore"):
        run_dir = sweep / "custom" / network / "mtsac" / "seed=0"
        assert json.loads((run_dir / "summary.json").read_text())["complete"], network
        assert f"name: {network}" in (run_dir / "config.yaml").read_text()
    # The report in its own process, as a user runs it. (In this process, tensorboard's reader would install
    # absl's log handler on pytest's captured stderr, and a later in-process Hydra run's logging set-up closes
    # that handler, and with it the capture file, breaking every later test of this worker.)
    out = tmp_path / "report"
    reported = subprocess.run(
        [sys.executable, "-m", "mtrl_famo.report", str(sweep), "--out", str(out), "--reps", "50"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert reported.returncode == 0, reported.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [(g["network"], g["balancer"], g["seeds_complete"]) for g in report["groups"]] == [
        ("moore", "mtsac", [0]),
        ("multihead", "mtsac", [0]),
    ]
    assert report["skipped"] == [] and report["warnings"] == []


def test_same_seed_same_losses(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    again = tmp_path / "again"
    result = run_cli(*TINY_RUN, "balancer=famo", f"run_dir={again}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = tb_scalars(run_dir), tb_scalars(again)
    for tag in ("loss/critic", "loss/actor", "eval/return"):
        assert first[tag] == second[tag], tag


def no_cuda(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def no_sweep_extra(monkeypatch, tmp_path) -> None:
    """As if hydra-submitit-launcher were not installed (CI installs the `sweep` extra)."""
    real = importlib.util.find_spec

    def find_spec(name, package=None):
        if name == SUBMITIT_PLUGIN or name.startswith(SUBMITIT_PLUGIN + "."):
            return None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def a_file_in_the_way(monkeypatch, tmp_path) -> None:
    (tmp_path / "blocker").write_text("a file where run_dir needs a directory\n")


# (override, fragment of the one-line error, setup run before the CLI). `{tmp}` is the test's
# tmp_path; a case that sets run_dir itself gets no run_dir from the test.
BAD_INPUT = [
    ("env=mt11", "Unknown env 'mt11'; choose one of custom, mt1, mt10, mt25, mt50", None),
    ("balancer=adam", f"Unknown balancer 'adam'; choose one of {', '.join(NAMES)}.", None),
    ("agent/network=nope", "Unknown agent/network 'nope'; choose one of moore, multihead, paco, soft_modular.", None),
    (
        "-m agent/network=moore,nope",
        "Unknown agent/network 'nope'; choose one of moore, multihead, paco, soft_modular.",
        None,
    ),
    ("env.tasks=[reach-v3,jump-v3]", "Unknown Metaworld task 'jump-v3'", None),
    ("steps=0", "steps=0 is invalid", None),
    ("agent.batch_size_per_task=-4", "agent.batch_size_per_task=-4 is invalid", None),
    ("agent.lr=abc", "agent.lr='abc' is invalid; it must be a number.", None),
    ("agent.tau=true", "agent.tau=True is invalid; it must be a number.", None),
    ("env.max_episode_steps=abc", "env.max_episode_steps='abc' is invalid; it must be an integer.", None),
    ("env.one_hot=maybe", "env.one_hot='maybe' is invalid; it must be true or false.", None),
    ("eval.every=500", "eval.every=500 is larger than steps=120", None),
    ("balancer=cagrad balancer.options.c=-1", "CAGrad c must be non-negative, got -1", None),
    ("device=cuda", "device=cuda was asked for but this machine has no usable CUDA device", no_cuda),
    ("device=cuda:0", "use device=cpu, or device=auto", no_cuda),
    ("run_dir=/proc/nope/run", "run_dir=/proc/nope/run cannot be created or written", None),
    ("run_dir={tmp}/blocker/run", "/blocker/run cannot be created or written", a_file_in_the_way),
    (
        "balancer=famo balancer.options.w_lr=abc",
        "Balancer 'famo' option w_lr='abc' has the wrong type; it must be a number",
        None,
    ),
    ("balancer=famo balancer.options.min_losses=[a,b]", "must be a number or a list of numbers", None),
    (
        "balancer=famo balancer.apply_to=[actor]",
        "balancer=famo needs positive losses but balancer.apply_to includes the actor loss",
        None,
    ),
    (
        "balancer=famo balancer.apply_to=[critic,actor]",
        "set balancer.options.min_losses below the lowest actor loss",
        None,
    ),
    ("hydra/launcher=slurm", "pip install -e '.[sweep]'", no_sweep_extra),
    (
        "-m hydra/launcher=slurm balancer=famo,mtsac",
        "needs the hydra-submitit-launcher plugin of the 'sweep' extra",
        no_sweep_extra,
    ),
    ("agent.batch_size_per_task=1000000000", "agent.batch_size_per_task=1000000000 does not fit in memory", None),
]


def assert_one_sentence(message: str, fragment: str) -> None:
    message = message.strip()
    assert fragment in message
    assert len(message.splitlines()) == 1 and "Traceback" not in message


@pytest.mark.parametrize("override, fragment, setup", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_clear_sentence(override, fragment, setup, tmp_path, monkeypatch):
    """In process, through the same entry point as `python -m mtrl_famo.train` (fast)."""
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(monkeypatch, tmp_path)
    before = sorted(tmp_path.iterdir())  # what the setup made
    arguments = override.format(tmp=tmp_path).split()
    if not any(argument.startswith("run_dir=") for argument in arguments):
        arguments.append(f"run_dir={tmp_path / 'bad'}")
    result = cli_in_process(*TINY_RUN, *arguments)
    assert result.returncode == 2
    assert_one_sentence(result.stderr, fragment)
    assert result.stdout == ""
    assert sorted(tmp_path.iterdir()) == before  # no run dir, no Hydra outputs, no probe left behind


def test_run_dir_probe_creates_the_directory_and_cleans_up_only_after_a_failure(tmp_path, monkeypatch):
    """The probe really creates run_dir and a file in it (root passes permission checks anyway)."""
    kept = tmp_path / "existing"
    kept.mkdir()
    check_run_dir(str(kept / "a" / "b"))
    assert (kept / "a" / "b").is_dir() and list((kept / "a" / "b").iterdir()) == []  # stays, no probe file

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(kwargs.get("dir")))

    monkeypatch.setattr("mtrl_famo.preflight.tempfile.NamedTemporaryFile", refuse)
    with pytest.raises(ConfigError) as error:
        check_run_dir(str(kept / "c" / "d"))
    assert "cannot be created or written (Permission denied" in str(error.value)
    assert sorted(p.name for p in kept.iterdir()) == ["a"]  # made by the failed probe: gone; existing: kept
    with pytest.raises(ConfigError):
        check_run_dir(str(kept / "a"))  # an existing directory it cannot write is left as it was
    assert (kept / "a" / "b").is_dir()


def test_sweep_job_checks_its_run_dir_inside_main(tmp_path, monkeypatch):
    """A multirun skips the pre-Hydra checks; each job (on its Slurm node) probes its own directory."""
    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(kwargs.get("dir")))

    monkeypatch.setattr("mtrl_famo.preflight.tempfile.NamedTemporaryFile", refuse)
    result = cli_in_process("-m", *TINY_RUN, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run_dir=") and "cannot be created or written (Read-only file system" in last


def test_bad_input_through_a_real_subprocess(tmp_path):
    """One case end to end as a user sees it: exit status 2, one line on stderr, nothing written."""
    override, fragment, _ = BAD_INPUT[0]
    result = run_cli(*TINY_RUN, override, f"run_dir={tmp_path / 'bad'}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert_one_sentence(result.stderr, fragment)
    assert list(tmp_path.iterdir()) == []
