"""Entry point: `python -m mtrl_famo.train env=mt10 balancer=famo [key=value ...]`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtrl_famo import preflight
from mtrl_famo.config import CONFIG_DIR, ConfigError, TrainConfig, compose, from_dict

GROUPS = ("env", "balancer", "agent", "agent/network", "experiment")


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
    """Check a single run's full config and this machine (mtrl_famo.preflight, the run_dir probe last:
    any other bad input leaves nothing behind) before Hydra creates any directory; returns it.

    Multirun sweeps and Hydra flags (`-m`, `--cfg`, ...) are left to Hydra (None); each job of a
    sweep is validated again inside `main`.
    """
    if any(argument.startswith("-") for argument in argv):
        return None
    config = compose(*argv, preflight=False)
    preflight.check(config, "train", run_dir=config.run_dir)
    return config


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
        preflight.check(config, "train", run_dir=config.run_dir)  # a sweep's job: this node's machine and view
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
        preflight.check_launcher(argv)
        check_group_choices(argv)
        check_config(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
