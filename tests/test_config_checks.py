"""Checks that stop bad input before training: device, balancers that need positive losses, memory.

(The CLI-level cases, one sentence and exit status 2, are in tests/test_cli.py.)
"""

from __future__ import annotations

import pytest
import torch

from mtrl_famo import memory
from mtrl_famo.balancers import LossWeighting
from mtrl_famo.config import BalancerConfig, ConfigError, compose
from mtrl_famo.preflight import check_launcher, check_positive_losses

GiB = 1 << 30
TWO_TASKS = ("env=custom", "env.tasks=[reach-v3,push-v3]")


def one_sentence(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message and message.endswith("."), message
    for part in parts:
        assert part in message, f"{part!r} missing from: {message}"
    return message


@pytest.mark.parametrize("env", ["env=mt10", "env=mt50", "env=mt1", "env=custom"])
def test_every_env_choice_composes(env: str) -> None:
    assert compose(env).env.name == env.split("=")[1]


# ---------------------------------------------------------------- device


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_refused(device: str, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        compose(*TWO_TASKS, f"device={device}")
    one_sentence(error, f"device={device}", "no usable CUDA device", "device=cpu")
    assert compose(*TWO_TASKS, "device=auto").device == "auto"  # auto falls back to the CPU


def test_a_cuda_index_the_machine_lacks_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * GiB, 16 * GiB))
    with pytest.raises(ConfigError) as error:
        compose(*TWO_TASKS, "device=cuda:2")
    one_sentence(error, "device=cuda:2", "2 CUDA device(s)", "cuda:0 to cuda:1")
    assert compose(*TWO_TASKS, "device=cuda:1").device == "cuda:1"


@pytest.mark.parametrize("device", ["gpu", "cudax", "cuda:x", "cuda0"])
def test_unknown_device_names_are_refused(device: str) -> None:
    with pytest.raises(ConfigError) as error:
        compose(*TWO_TASKS, f"device={device}")
    one_sentence(error, f"device={device} is invalid", "auto, cpu, cuda or cuda:N")


# ---------------------------------------------------------------- balancers that need positive losses


@pytest.mark.parametrize("bound", ["0.0", "0.5", "[-5.0,0.0]"], ids=["default-0", "positive", "one-task-not-below-0"])
def test_famo_on_the_actor_is_refused_unless_every_bound_is_below_zero(bound: str) -> None:
    with pytest.raises(ConfigError) as error:
        compose(*TWO_TASKS, "balancer=famo", "balancer.apply_to=[critic,actor]", f"balancer.options.min_losses={bound}")
    one_sentence(
        error, "balancer=famo", "actor loss", "balancer.apply_to=[critic]", "balancer.options.min_losses below"
    )


@pytest.mark.parametrize("bound", ["-1000", "[-50,-1e-3]"])
def test_famo_on_the_actor_with_a_negative_bound_is_accepted(bound: str) -> None:
    config = compose(
        *TWO_TASKS, "balancer=famo", "balancer.apply_to=[critic,actor]", f"balancer.options.min_losses={bound}"
    )
    assert config.balancer.apply_to == ("critic", "actor")


def test_famo_on_the_critic_and_other_balancers_on_the_actor_are_accepted() -> None:
    assert compose(*TWO_TASKS, "balancer=famo").balancer.apply_to == ("critic",)
    for name in ("mtsac", "pcgrad", "cagrad"):
        assert compose(*TWO_TASKS, f"balancer={name}", "balancer.apply_to=[actor]").balancer.name == name


class LogLoss(LossWeighting):
    """A scale-invariant log-loss method: needs positive losses and has no bound option."""

    needs_positive_losses = True

    def weights(self) -> torch.Tensor:
        return torch.full((self.num_tasks,), 1.0 / self.num_tasks)


def test_the_positive_loss_check_is_generic() -> None:
    built = LogLoss(2)
    check_positive_losses(BalancerConfig(name="logloss", apply_to=("critic",), options={}), built)
    with pytest.raises(ConfigError) as error:
        check_positive_losses(BalancerConfig(name="logloss", apply_to=("actor", "critic"), options={}), built)
    message = one_sentence(error, "balancer=logloss needs positive losses", "actor loss", "balancer.apply_to=[critic]")
    assert "options" not in message  # no bound option to suggest


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize("env", ["env=mt10", "env=mt50"])
@pytest.mark.parametrize("balancer", ["mtsac", "famo", "pcgrad", "cagrad"])
def test_default_mt10_and_mt50_fit_a_24_gib_machine(env: str, balancer: str, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda device: 16 * GiB)  # 24 GiB, 8 in use by others
    config = compose(env, f"balancer={balancer}")
    obs_dim, action_dim = config.env.dims()
    need = memory.estimate_memory(config.agent, config.balancer, len(config.env.task_names()), obs_dim, action_dim)
    assert need.total < 2 * GiB


def test_too_big_a_batch_is_refused_with_what_it_needs_and_what_is_free(monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda device: 3 * GiB)
    with pytest.raises(ConfigError) as error:
        compose("env=mt10", "agent.batch_size_per_task=200000")
    one_sentence(
        error,
        "agent.batch_size_per_task=200000 does not fit in memory",
        "only 3.0 GiB is free on cpu",
        "lower agent.batch_size_per_task",
    )
    with pytest.raises(ConfigError) as error:
        compose("env=mt10", "agent.replay_size=10000000")
    one_sentence(error, "agent.replay_size=10000000 does not fit", "replay 3.9 GiB", "lower agent.replay_size")


def test_memory_on_cuda_is_the_devices_free_memory(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * GiB, 80 * GiB))
    assert memory.available_memory(torch.device("cuda")) == GiB
    with pytest.raises(ConfigError) as error:
        compose("env=mt10", "device=cuda", "agent.batch_size_per_task=100000")
    one_sentence(error, "only 1.0 GiB is free on cuda")


def test_available_cpu_memory_is_meminfo_or_a_fallback(monkeypatch, tmp_path) -> None:
    free = memory.available_memory(torch.device("cpu"))
    assert free is not None and free > 0
    original = memory.Path.read_text

    def no_meminfo(self, *args, **kwargs):
        if str(self) == "/proc/meminfo":
            raise OSError("no /proc here")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(memory.Path, "read_text", no_meminfo)
    fallback = memory.available_memory(torch.device("cpu"))
    assert fallback is not None and fallback > 0
    monkeypatch.undo()
    monkeypatch.setattr(memory, "cgroup_free_bytes", lambda: 1024)  # a cgroup with 1 KiB of room left
    assert memory.available_memory(torch.device("cpu")) == 1024


def test_a_cgroup_limit_lowers_the_available_memory(tmp_path) -> None:
    """A Slurm job (--mem) or a container sees the host's MemAvailable but may only use its cgroup's room."""
    root = tmp_path / "cgroup"
    job = root / "slurm" / "job_7"
    task = job / "step_0" / "task_0"
    task.mkdir(parents=True)
    (root / "memory.max").write_text("max\n")  # the root itself: no limit
    (job / "memory.max").write_text(f"{4 * GiB}\n")
    (job / "memory.current").write_text(f"{1 * GiB}\n")
    (task / "memory.max").write_text("max\n")
    proc = tmp_path / "cgroup-of-self"
    proc.write_text("4:memory:/elsewhere\n0::/slurm/job_7/step_0/task_0\n")
    assert memory.cgroup_free_bytes(proc, root) == 3 * GiB  # the job's limit, found above the task
    (task / "memory.max").write_text(f"{2 * GiB}\n")
    (task / "memory.current").write_text(f"{int(1.5 * GiB)}\n")
    assert memory.cgroup_free_bytes(proc, root) == GiB // 2  # the tightest level wins
    proc.write_text("0::/\n")
    assert memory.cgroup_free_bytes(proc, root) is None
    assert memory.cgroup_free_bytes(tmp_path / "missing", root) is None


# ---------------------------------------------------------------- Slurm launcher without the sweep extra


def test_launcher_check_only_concerns_submitit_launchers(monkeypatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    check_launcher(["hydra/launcher=local", "balancer=famo"])
    with pytest.raises(ConfigError) as error:
        check_launcher(["-m", "hydra/launcher=slurm"])
    one_sentence(error, "hydra/launcher=slurm", "'sweep' extra", "pip install -e '.[sweep]'")
