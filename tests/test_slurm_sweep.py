"""Seed sweeps through the real submitit Slurm launcher on a real local Slurm cluster.

The cluster is started by the project's own `scripts/local_slurm.sh` (munge, slurmctld, slurmd on
localhost). A sweep is submitted exactly as a user would (`python -m mtrl_famo.train -m ...
hydra/launcher=slurm`), then jobs are re-queued mid-run the two ways a cluster does it:
`scontrol requeue` (SIGTERM, then Slurm restarts the job) and the time-limit/preemption signal
(SIGUSR2, submitit's checkpoint mechanism re-queues the job).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DETERMINISTIC_TAGS, REPO, TINY_RUN, cli_environment, tb_scalars, wait_for

pytestmark = pytest.mark.slow  # a real Slurm cluster and sweeps through it

STEPS = 240  # evaluations at 80, 160, 240; interrupted jobs resume from 80 (PAUSE_AT below)
SWEEP_RUN = [
    *(o for o in TINY_RUN if not o.startswith(("steps=", "eval.every="))),
    f"steps={STEPS}",
    "eval.every=80",
    "checkpoint.every=40",  # 40-step episodes: a checkpoint at every episode end
]
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=null",
    "hydra.launcher.timeout_min=30",
    # Same thread count in every job, so CPU runs are bit-for-bit comparable.
    "hydra.launcher.setup=['export OMP_NUM_THREADS=1']",
]
PAUSE_AT = 100  # interrupted jobs are held mid-episode here (episodes end every 40 steps)


REQUIRE_SLURM = "MTRL_FAMO_REQUIRE_SLURM"  # CI sets it to 1: a cluster that cannot start is a failure


def has_root() -> bool:
    """Root, or sudo without a password (what scripts/local_slurm.sh uses to start the daemons)."""
    if os.geteuid() == 0:
        return True
    return (
        shutil.which("sudo") is not None and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
    )


def slurm_unavailable_reason() -> str | None:
    """Why scripts/local_slurm.sh cannot start a cluster on this machine, or None when it can."""
    if not has_root():
        return "the local Slurm cluster needs root or passwordless sudo to start its daemons, and this user has neither"
    installed = all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch"))
    if not installed and not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is not available to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Start (installing if needed) the local single-node cluster with the project's script."""
    reason = slurm_unavailable_reason()
    if reason is not None:
        message = f"Slurm tests need a local cluster: {reason}."
        if os.environ.get(REQUIRE_SLURM) == "1":
            pytest.fail(f"{message} ({REQUIRE_SLURM}=1 makes this a failure.)")
        pytest.skip(message)
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "local_slurm.sh"), "start"], capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/local_slurm.sh start failed:\n{result.stdout}\n{result.stderr}")


def submit_sweep(
    sweep_dir: Path, *overrides: str, pause_at: int | None = None, marker: Path | None = None
) -> subprocess.Popen:
    """Submit a multirun sweep to Slurm; the process waits for every job, as submitit does.

    With `pause_at`, the job (which inherits this environment through sbatch) is held by
    tests/hooks right after that step until a signal reaches it, and writes `marker` there.
    """
    env = cli_environment(pause_at, marker, scripted_success=True)  # success rates that differ (tests/hooks)
    del env["OMP_NUM_THREADS"]  # the jobs set it themselves (LAUNCHER's setup)
    command = [
        sys.executable,
        "-m",
        "mtrl_famo.train",
        "-m",
        *SWEEP_RUN,
        *LAUNCHER,
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    return subprocess.Popen(
        command, cwd=sweep_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen) -> str:
    """Wait for the sweep, without a deadline of its own (a loaded machine only makes it slower); a hung
    sweep is ended by pytest-timeout, and its output is printed on the way out."""
    try:
        output, _ = process.communicate()
    except BaseException:
        process.kill()
        print(process.communicate()[0][-4000:])
        raise
    assert process.returncode == 0, output[-4000:]
    return output


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    return tb_scalars(run_dir, DETERMINISTIC_TAGS)


def assert_complete_run(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["env_steps"] == STEPS
    data = scalars(run_dir)
    for tag, points in data.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag} has duplicated or looping steps: {steps}"
    assert [step for step, _ in data["eval/success_rate"]] == list(range(80, STEPS + 1, 80))
    return data


def slurm_job_id(sweep_dir: Path, process: subprocess.Popen) -> str:
    """The array job id submitit used, read from its folder `<sweep>/.submitit/<job id>`; fails at
    once if the submitting process ends before the folder appears (no deadline otherwise)."""
    while True:
        folders = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.name.isdigit()]
        if folders:
            return folders[0]
        if process.poll() is not None:
            pytest.fail(f"no submitit job folder appeared in {sweep_dir / '.submitit'}:\n{finish(process)[-4000:]}")
        time.sleep(0.2)


def restarts(job_id: str) -> int:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    field = next(part for part in shown.split() if part.startswith("Restarts="))
    return int(field.removeprefix("Restarts="))


@pytest.fixture(scope="module")
def sweep(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 balancers x 2 seeds, submitted as one Slurm array job and waited for."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "sweep"
    finish(submit_sweep(sweep_dir, "balancer=famo,mtsac", "seed=0,1"))
    return sweep_dir


def test_sweep_runs_land_in_deterministic_dirs(sweep: Path) -> None:
    runs = sorted(str(p.parent.relative_to(sweep)) for p in sweep.glob("**/summary.json"))
    assert runs == [  # <env>/<network>/<balancer>/seed=<n>
        "custom/multihead/famo/seed=0",
        "custom/multihead/famo/seed=1",
        "custom/multihead/mtsac/seed=0",
        "custom/multihead/mtsac/seed=1",
    ]
    for run in runs:
        data = assert_complete_run(sweep / run)
        config = (sweep / run / "config.yaml").read_text()
        assert "name: multihead" in config and f"name: {run.split('/')[2]}" in config and "${" not in config
        assert "eval/success_rate/reach-v3" in data and "loss/critic" in data


def test_report_of_the_sweep_matches_its_event_files(sweep: Path, tmp_path: Path) -> None:
    """`python -m mtrl_famo.report` on the Slurm sweep: one row per balancer, numbers from the events."""
    from mtrl_famo.report import CURVES_PNG, REPORT_JSON, REPORT_MD

    result = subprocess.run(
        [sys.executable, "-m", "mtrl_famo.report", str(sweep), "--out", str(tmp_path), "--reps", "500"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / REPORT_JSON).read_text())
    assert [(g["env"], g["network"], g["balancer"], g["n_complete"]) for g in report["groups"]] == [
        ("custom", "multihead", "famo", 2),
        ("custom", "multihead", "mtsac", 2),
    ]
    assert report["incomplete"] == [] and report["skipped"] == []
    every_final_and_best = []
    for group in report["groups"]:
        finals, bests = [], []
        for seed in (0, 1):
            success = scalars(sweep / "custom" / "multihead" / group["balancer"] / f"seed={seed}")["eval/success_rate"]
            finals.append(success[-1][1])
            bests.append(max(value for _, value in success))
        assert group["final_success"]["point"] == pytest.approx(sum(finals) / 2)
        assert group["best_success"]["point"] == pytest.approx(sum(bests) / 2)
        assert group["curve"]["steps"] == list(range(80, STEPS + 1, 80))
        every_final_and_best += finals + bests
    # Precondition (success scripted from real returns by tests/hooks): the numbers compared above
    # are not all the same value, so a report that mixed them up could not match.
    assert len(set(every_final_and_best)) > 1
    rows = [line for line in (tmp_path / REPORT_MD).read_text().splitlines() if line.startswith("| none | custom |")]
    cells = [[cell.strip() for cell in row.split("|")[3:5]] for row in rows]  # experiment | env | network | balancer
    assert cells == [["multihead", "famo"], ["multihead", "mtsac"]]
    assert (tmp_path / CURVES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("interrupt", ["scontrol-requeue", "usr2-signal"])
def test_requeued_job_resumes_and_matches_uninterrupted(sweep: Path, tmp_path: Path, interrupt: str) -> None:
    """Interrupted mid-run, re-queued by Slurm, resumed from the checkpoint: same numbers, no duplicates."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    marker = tmp_path / "paused"
    process = submit_sweep(sweep_dir, "balancer=famo", "seed=0", pause_at=PAUSE_AT, marker=marker)
    job_id = slurm_job_id(sweep_dir, process)
    run_dir = sweep_dir / "custom" / "multihead" / "famo" / "seed=0"
    wait_for(marker, process)  # the job is held mid-episode until the signal lands
    if interrupt == "scontrol-requeue":
        # What preemption by requeue and an admin's requeue do: SIGTERM now, restart later.
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    else:
        # The signal Slurm sends `signal_delay_s` before the time limit (--signal=USR2@...).
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    output = finish(process)
    assert restarts(job_id) == 1, output[-4000:]
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob(f"{job_id}/*.err"))
    if interrupt == "usr2-signal":
        assert "Caught signal SIGUSR2" in logs and "this job is preempted" in logs

    resumed = assert_complete_run(run_dir)
    uninterrupted = scalars(sweep / "custom" / "multihead" / "famo" / "seed=0")
    assert set(resumed) == set(uninterrupted)
    for tag, points in resumed.items():
        assert points == uninterrupted[tag], f"{tag} differs from the uninterrupted run of the sweep"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # one event file per attempt
