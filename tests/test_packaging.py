"""Installed layout: agents/, envs/ and configs/ are importable only as mtrl_famo.agents, .envs and .configs,
and the package installed from its sdist and wheel runs without the checkout.

The slow test builds the sdist with setuptools' own PEP 517 hooks (what `python -m build --sdist` calls)
from a copy of the working tree, builds the wheel from that sdist with pip (what `python -m build` does),
installs it into a fresh virtual environment outside the repository (its dependencies come from this
test environment, added to the fresh one's path), and runs the CLI from a directory outside the
repository. No network: the builds use this environment's setuptools (`--no-build-isolation`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# What a build of the working tree must not pick up (none of it is source).
NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "runs", "multirun"
)
# A run of a handful of steps: 2 tasks, 10-step episodes, an 8-unit network, everything in one process.
TINY_STEPS = 20
TINY = [
    "env=custom",
    "env.tasks=[reach-v3,push-v3]",
    "env.max_episode_steps=10",
    "env.vector_strategy=sync",
    "agent.hidden_dim=8",
    "agent.num_layers=1",
    "agent.batch_size_per_task=4",
    "agent.warmup_steps=10",
    "agent.replay_size=100",
    f"steps={TINY_STEPS}",
    f"eval.every={TINY_STEPS}",
    "eval.episodes=1",
    "eval.background=false",
    "log.every=10",
    "progress=false",
    "device=cpu",
]


def test_agents_and_envs_are_namespaced_and_not_top_level(tmp_path) -> None:
    # From a directory outside the repository, as another project would import them.
    code = (
        "import importlib.util, mtrl_famo.agents as a, mtrl_famo.envs as e\n"
        "assert a.__file__.endswith('agents/__init__.py') and e.__file__.endswith('envs/__init__.py')\n"
        "print(importlib.util.find_spec('agents'), importlib.util.find_spec('envs'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None"]


def config_files() -> list[str]:
    """Every YAML of the repository's config tree, relative to configs/."""
    root = REPO / "configs"
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*.yaml"))


def run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`command` from `cwd`, with nothing of the repository on the path (no PYTHONPATH)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@dataclass
class Installed:
    sdist_files: list[str]  # paths inside the sdist, below its top folder
    wheel_files: list[str]
    python: Path  # the fresh environment's interpreter
    site: Path  # its site-packages
    outside: Path  # a working directory outside the repository


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    source, dist = work / "source", work / "dist"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)  # a build writes egg-info/ and build/ into its source
    build_sdist = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    name = run([sys.executable, "-c", build_sdist, str(dist)], cwd=source).stdout.split()[-1]
    with tarfile.open(dist / name) as archive:
        sdist_files = [member.name.partition("/")[2] for member in archive.getmembers() if member.isfile()]
        archive.extractall(work / "unpacked", filter="data")
    unpacked = work / "unpacked" / name.removesuffix(".tar.gz")
    pip = [sys.executable, "-m", "pip"]
    offline = ["--no-deps", "--no-index", "--no-cache-dir", "-q"]
    run([*pip, "wheel", "--no-build-isolation", *offline, "-w", str(dist), str(unpacked)], cwd=work)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        wheel_files = archive.namelist()

    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    run([*pip, "--python", str(python), "install", *offline, str(wheel)], cwd=work)  # before the .pth below
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run([str(python), "-c", purelib], cwd=work).stdout.strip())
    # The dependencies (torch, metaworld, hydra, ...) from this environment's site-packages, after the
    # fresh one's own (a .pth path line: the editable install's own .pth files there are not run).
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    ours |= {path for path in sys.path if path.endswith(("site-packages", "dist-packages"))}
    (site / "test-environment.pth").write_text("".join(f"{path}\n" for path in sorted(ours) if Path(path).is_dir()))
    outside = work / "elsewhere"
    outside.mkdir()
    return Installed(sdist_files, wheel_files, python, site, outside)


@pytest.mark.slow
def test_sdist_and_wheel_carry_every_config(installed: Installed) -> None:
    """The repository keeps configs/ at its top level; the sdist keeps it there and the wheel installs it
    as the package mtrl_famo.configs (the wheel is built from the sdist, as `python -m build` does)."""
    configs = config_files()
    assert {"config.yaml", "env/mt10.yaml", "balancer/famo.yaml", "hydra/launcher/slurm.yaml"} <= set(configs)
    assert {f"configs/{name}" for name in configs} <= set(installed.sdist_files)
    assert {"pyproject.toml", "README.md", "configs/__init__.py"} <= set(installed.sdist_files)
    assert {f"mtrl_famo/configs/{name}" for name in configs} <= set(installed.wheel_files)
    assert "mtrl_famo/configs/__init__.py" in installed.wheel_files
    top_level = {name.split("/")[0] for name in installed.wheel_files if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"mtrl_famo"}  # no top-level agents/, envs/ or configs/


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(installed: Installed) -> None:
    """From a directory outside the repository, with the installed wheel: `--cfg job`, a run of a
    handful of steps, and `balancers.make` (options from the installed configs/balancer/famo.yaml)."""
    python, outside = str(installed.python), installed.outside
    probe = (
        "import json, mtrl_famo, mtrl_famo.config as config\n"
        "from mtrl_famo import balancers\n"
        "balancer = balancers.make('famo', 3)\n"
        "print(json.dumps([mtrl_famo.__file__, str(config.CONFIG_DIR), type(balancer).__name__]))\n"
    )
    package, config_dir, balancer = json.loads(run([python, "-c", probe], cwd=outside).stdout.splitlines()[-1])
    assert Path(package).is_relative_to(installed.site) and Path(config_dir) == installed.site / "mtrl_famo" / "configs"
    assert balancer == "FAMO"

    job = yaml.safe_load(run([python, "-m", "mtrl_famo.train", "--cfg", "job", *TINY], cwd=outside).stdout)
    assert job["env"]["tasks"] == ["reach-v3", "push-v3"] and job["balancer"]["name"] == "mtsac"
    assert job["steps"] == TINY_STEPS

    run_dir = outside / "run"
    result = run([python, "-m", "mtrl_famo.train", *TINY, "balancer=famo", f"run_dir={run_dir}"], cwd=outside)
    assert f"done: {TINY_STEPS} steps per task" in result.stdout
    assert {"config.yaml", "summary.json", "checkpoint.pt"} <= {path.name for path in run_dir.iterdir()}
    assert json.loads((run_dir / "summary.json").read_text())["complete"] is True
