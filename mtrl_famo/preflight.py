"""Pre-flight: every check that asks the machine rather than the config, run before anything is built.

Why a module of its own: mtrl_famo.config is the schema, and its checks need nothing but the values (it
imports neither torch nor gymnasium). Whether a run can start *here* is another question: is the CUDA
device there, does the run fit in the memory free, can this torch compile or record a CUDA graph for
this balancer, do the balancer's options build and does it accept the losses it is given, can the
run_dir be written, are the extras that a setting needs installed (the Slurm launcher, video, W&B) and
does the rendering backend work. Those checks import torch and the domain (balancers, learner, envs),
so they sit a layer above the schema, here, and every one of them is reached from `check`.

`check(config, purpose)` is what the CLIs run (mtrl_famo.train, mtrl_famo.evaluate) after the config
is read and before anything is built, and what `mtrl_famo.config.compose` runs for scripts and tests
(its `preflight=True`). The run_dir probe creates the directory, so it runs only when asked
(`run_dir=`), last. `check_launcher` reads the command line (a Hydra launcher is not part of the
config), before the config is composed. Each refusal is one sentence, a ConfigError (exit status 2).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import tempfile
from pathlib import Path

import torch

from mtrl_famo import balancers, compiled_update, memory, video, wandb_logger
from mtrl_famo.config import LOSSES_THAT_CAN_BE_NEGATIVE, BalancerConfig, ConfigError, Purpose, TrainConfig

# hydra/launcher choices that need the submitit plugin of the `sweep` extra.
SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")
SUBMITIT_PLUGIN = "hydra_plugins.hydra_submitit_launcher"


def check(config: TrainConfig, purpose: Purpose = "train", *, run_dir: str | None = None) -> None:
    """Refuse, in one sentence, a checked config this machine cannot run (for `purpose`); with `run_dir`,
    also a directory that cannot be created or written (probed last: any other refusal leaves nothing)."""
    check_device(config.device)
    check_balancer(config.balancer, len(config.env.task_names()))
    try:
        compiled_update.check_config(
            config.agent.compile, config.agent.cuda_graph, config.device, config.balancer.name, config.balancer.apply_to
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    memory.check_memory(config, purpose)
    if config.wandb.enabled:
        wandb_logger.check_wandb()
    if config.eval.video:
        video.check_video()  # last of the config's checks: it may render a probe frame
    if run_dir is not None:
        check_run_dir(run_dir)


def check_device(device: str) -> None:
    """`auto`, `cpu`, `cuda` or `cuda:N`, and a CUDA device only where this machine has one."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device not in ("auto", "cpu") and match is None:
        raise ConfigError(f"device={device} is invalid; choose auto, cpu, cuda or cuda:N.")
    if match is None:
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={device} was asked for but this machine has no usable CUDA device (torch.cuda.is_available() is "
            "False); use device=cpu, or device=auto to take a GPU only where there is one."
        )
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise ConfigError(
            f"device={device} does not exist; this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}."
        )


def check_balancer(balancer: BalancerConfig, num_tasks: int) -> None:
    """The balancer builds with its options (its own checks: types, ranges) and accepts the losses it is
    applied to."""
    try:
        built = balancers.make(balancer.name, num_tasks, **balancer.options)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None
    check_positive_losses(balancer, built)


def check_positive_losses(balancer: BalancerConfig, built: balancers.Balancer) -> None:
    """Refuse a balancer that needs positive losses on a loss that is normally negative (SAC's actor loss)."""
    for loss in balancer.apply_to:
        if loss in LOSSES_THAT_CAN_BE_NEGATIVE and not built.accepts_negative_losses():
            bound = type(built).loss_bound_option
            bound_fix = f", or set balancer.options.{bound} below the lowest {loss} loss" if bound else ""
            others = [name for name in balancer.apply_to if name not in LOSSES_THAT_CAN_BE_NEGATIVE] or ["critic"]
            raise ConfigError(
                f"balancer={balancer.name} needs positive losses but balancer.apply_to includes the {loss} loss, "
                "which in "
                f"SAC (alpha log pi - Q) is normally negative and would stop training with an error; keep "
                f"balancer.apply_to=[{','.join(others)}]{bound_fix}."
            )


def check_run_dir(run_dir: str) -> None:
    """Refuse a run directory that cannot be created or written, by really creating it and a file in it.

    (Permission bits do not tell: root writes almost anywhere, and /proc or a read-only mount refuse
    even root.) What the probe creates stays when it succeeds (the run writes there next); when it
    fails, the directories it created are removed again.
    """
    path = Path(run_dir).absolute()
    missing = []  # the directories the probe will create, deepest first
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    path = Path(run_dir).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as error:
        for directory in missing:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: never anything the probe did not make
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"run_dir={run_dir} cannot be created or written ({reason}: {error.filename or path}); "
            "choose a directory you can write, e.g. run_dir=runs/my-run."
        ) from None


def check_launcher(argv: list[str]) -> None:
    """Refuse `hydra/launcher=slurm` without the `sweep` extra, naming the install command."""
    for argument in argv:
        key, sep, value = argument.partition("=")
        if not sep or key.lstrip("+~") != "hydra/launcher" or value not in SUBMITIT_LAUNCHERS:
            continue
        try:
            installed = importlib.util.find_spec(SUBMITIT_PLUGIN) is not None
        except ImportError:  # the parent package hydra_plugins is missing altogether
            installed = False
        if not installed:
            raise ConfigError(
                f"hydra/launcher={value} needs the hydra-submitit-launcher plugin of the 'sweep' extra, which is not "
                "installed; install it with pip install -e '.[sweep]' (from the repository root)."
            )
