"""Balancer registry: every method lives in its own module and is reached through `make`.

The default of every option lives in ONE place, the balancer's config file
`configs/balancer/<name>.yaml` (its `options:` block, documented there). The classes have no
defaults of their own; `make` fills the options a caller leaves out from that file, so code
callers and `python -m mtrl_famo.train balancer=<name>` get the same values.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import typing
from functools import cache
from pathlib import Path
from typing import Any

from mtrl_famo.balancers.backprop import BackwardResult, backward, backward_grouped
from mtrl_famo.balancers.base import Balancer, GradientManipulation, GramMixing, HostGramMixing, LossWeighting
from mtrl_famo.balancers.registry import REGISTRY, register
from mtrl_famo.config import CONFIG_DIR
from mtrl_famo.typecheck import describe, matches

_INFRASTRUCTURE = {"backprop", "base", "registry"}


def _import_every_method() -> None:
    """Import each method module of this package; their `@register` fills REGISTRY."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _INFRASTRUCTURE:
            importlib.import_module(f"{__name__}.{module.name}")


_import_every_method()
# The registered names; the torch-free list of the config's choices (mtrl_famo.config.BALANCER_NAMES, read
# from configs/balancer/*.yaml) must equal it: tests/test_config_schema.py checks that.
NAMES: tuple[str, ...] = tuple(sorted(REGISTRY))


def options_of(name: str) -> list[str]:
    """The keyword options a balancer accepts (besides num_tasks)."""
    parameters = inspect.signature(REGISTRY[name].__init__).parameters
    return [p for p in parameters if p not in ("self", "num_tasks")]


def config_file(name: str) -> Path:
    """`configs/balancer/<name>.yaml`, the home of the balancer's option defaults."""
    return CONFIG_DIR / "balancer" / f"{name}.yaml"


@cache
def _config_options(name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The `options:` block of the balancer's config file: (plain values, interpolations as written)."""
    from omegaconf import OmegaConf

    options = OmegaConf.load(config_file(name)).get("options") or OmegaConf.create({})
    raw = OmegaConf.to_container(options, resolve=False)
    interpolated = {key: str(raw[key]) for key in options if OmegaConf.is_interpolation(options, key)}
    return {key: value for key, value in raw.items() if key not in interpolated}, interpolated


def config_option_names(name: str) -> list[str]:
    """Every option the balancer's config file sets, interpolated ones (`seed: ${seed}`) included."""
    plain, interpolated = _config_options(name)
    return [*plain, *interpolated]


def default_options(name: str) -> dict[str, Any]:
    """The options' defaults from `configs/balancer/<name>.yaml` (a fresh copy).

    An option set there by interpolation (PCGrad's `seed: ${seed}`) takes its value from the run's
    config and so has no standalone default: it is left out, and `make` requires it.
    """
    if name not in REGISTRY:
        raise ValueError(f"Unknown balancer '{name}'; choose one of {', '.join(NAMES)}.")
    return copy.deepcopy(_config_options(name)[0])


def check_option_types(name: str, options: dict[str, Any]) -> None:
    """Refuse an option whose value does not fit the constructor's type hint, in one sentence."""
    hints = typing.get_type_hints(REGISTRY[name].__init__)
    for option, value in options.items():
        if option in hints and not matches(value, hints[option]):
            raise ValueError(
                f"Balancer '{name}' option {option}={value!r} has the wrong type; it must be {describe(hints[option])}."
            )


def make(name: str, num_tasks: int, **options: Any) -> Balancer:
    """Build balancer `name` for `num_tasks` tasks; options not given come from its config file.

    Unknown names or options, options of the wrong type and options without a default that were
    not given fail in one sentence.
    """
    if name not in REGISTRY:
        raise ValueError(f"Unknown balancer '{name}'; choose one of {', '.join(NAMES)}.")
    allowed = options_of(name)
    for option in options:
        if option not in allowed:
            raise ValueError(
                f"Unknown option '{option}' for balancer '{name}'; valid options are {', '.join(allowed)}."
            )
    defaults = default_options(name)
    for option in allowed:
        if option not in options and option not in defaults:
            written = _config_options(name)[1].get(option)
            where = f"sets it to {written}, a value of the run's config" if written else "has no value for it"
            raise ValueError(
                f"Balancer '{name}' option '{option}' has no standalone default "
                f"(configs/balancer/{name}.yaml {where}); pass {option}=... to make()."
            )
    options = {option: options[option] if option in options else defaults[option] for option in allowed}
    check_option_types(name, options)
    return REGISTRY[name](num_tasks, **options)


__all__ = [
    "NAMES",
    "REGISTRY",
    "BackwardResult",
    "Balancer",
    "GradientManipulation",
    "GramMixing",
    "HostGramMixing",
    "LossWeighting",
    "backward",
    "backward_grouped",
    "check_option_types",
    "config_option_names",
    "default_options",
    "make",
    "options_of",
    "register",
]
