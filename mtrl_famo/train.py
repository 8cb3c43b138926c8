"""Entry point: `python -m mtrl_famo.train env=mt10 balancer=famo [key=value ...]`."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtrl_famo.config import CONFIG_DIR, ConfigError, TrainConfig, compose, from_dict

GROUPS = ("env", "balancer", "agent", "experiment")
# hydra/launcher choices that need the submitit plugin of the `sweep` extra.
SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")
SUBMITIT_PLUGIN = "hydra_plugins.hydra_submitit_launcher"


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


def check_group_choices(argv: list[str]) -> None:
    """Refuse `env=foo` (and other unknown group choices) in one sentence, before Hydra does."""
    for argument in argv:
        key, sep, value = argument.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in GROUPS:
            continue
        choices = sorted(p.stem for p in (CONFIG_DIR / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice and choice not in choices:
                raise ConfigError(f"Unknown {key} '{choice}'; choose one of {', '.join(choices)}.")


def check_config(argv: list[str]) -> TrainConfig | None:
    """Validate a single run's full config before Hydra creates any directory; returns it.

    Multirun sweeps and Hydra flags (`-m`, `--cfg`, ...) are left to Hydra (None); each job of a
    sweep is validated again inside `main`.
    """
    if any(argument.startswith("-") for argument in argv):
        return None
    return compose(*argv)


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


def resolved_run_dir(cfg: DictConfig) -> str:
    """In a multirun every job writes to its own deterministic sweep sub-directory."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return hydra_cfg.runtime.output_dir
    return str(cfg.run_dir)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mtrl_famo.checkpoint import CheckpointError
    from mtrl_famo.self_check import SpeedLayerError
    from mtrl_famo.trainer import Trainer

    cfg.run_dir = resolved_run_dir(cfg)
    try:
        config = from_dict(OmegaConf.to_container(cfg, resolve=True))
        check_run_dir(config.run_dir)  # a sweep's job: this node's view of the directory
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    run_dir = Path(config.run_dir)
    try:
        summary = Trainer(config).train(resolved_config=OmegaConf.to_yaml(cfg, resolve=True))
    except (CheckpointError, SpeedLayerError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(
        f"done: {summary['env_steps']} steps per task, eval success rate {summary['eval_success_rate']}, "
        f"run dir {run_dir}"
    )


def cli() -> None:
    argv = sys.argv[1:]
    try:
        check_launcher(argv)
        check_group_choices(argv)
        config = check_config(argv)
        if config is not None:
            check_run_dir(config.run_dir)  # last: any other bad input leaves nothing behind
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
