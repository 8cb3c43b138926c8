"""Entry point: `python -m mtrl_famo.train env=mt10 balancer=famo [key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtrl_famo.config import CONFIG_DIR, ConfigError, from_dict
GROUPS = ("env", "balancer", "agent")


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


def check_config(argv: list[str]) -> None:
    """Validate a single run's full config before Hydra creates any directory.

    Multirun sweeps and Hydra flags (`-m`, `--cfg`, ...) are left to Hydra; each job of a sweep
    is validated again inside `main`.
    """
    if any(argument.startswith("-") for argument in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=argv)
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        first_line = str(error).strip().splitlines()[0]
        if first_line.startswith("Could not override"):
            first_line = first_line.rstrip(".") + ": no such config key; `python -m mtrl_famo.train --cfg job` lists them all."
        raise ConfigError(first_line) from None
    from_dict(resolved)


def resolved_run_dir(cfg: DictConfig) -> str:
    """In a multirun every job writes to its own deterministic sweep sub-directory."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return hydra_cfg.runtime.output_dir
    return str(cfg.run_dir)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mtrl_famo.checkpoint import CheckpointError
    from mtrl_famo.trainer import Trainer

    cfg.run_dir = resolved_run_dir(cfg)
    try:
        config = from_dict(OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    run_dir = Path(config.run_dir)
    try:
        summary = Trainer(config).train(resolved_config=OmegaConf.to_yaml(cfg, resolve=True))
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"done: {summary['env_steps']} steps per task, eval success rate {summary['eval_success_rate']}, run dir {run_dir}")


def cli() -> None:
    try:
        check_group_choices(sys.argv[1:])
        check_config(sys.argv[1:])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
