"""Balancer registry: every method lives in its own module and is reached through `make`."""

from __future__ import annotations

import inspect
from typing import Any

from mtrl_famo.balancers.base import Balancer, GradientManipulation, LossWeighting
from mtrl_famo.balancers.cagrad import CAGrad
from mtrl_famo.balancers.famo import FAMO
from mtrl_famo.balancers.mtsac import MeanLoss
from mtrl_famo.balancers.pcgrad import PCGrad

REGISTRY: dict[str, type[Balancer]] = {
    "mtsac": MeanLoss,
    "famo": FAMO,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def options_of(name: str) -> list[str]:
    """The keyword options a balancer accepts (besides num_tasks)."""
    parameters = inspect.signature(REGISTRY[name].__init__).parameters
    return [p for p in parameters if p not in ("self", "num_tasks")]


def make(name: str, num_tasks: int, **options: Any) -> Balancer:
    """Build balancer `name` for `num_tasks` tasks; unknown names or options fail in one sentence."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown balancer '{name}'; choose one of {', '.join(NAMES)}.")
    allowed = options_of(name)
    for option in options:
        if option not in allowed:
            raise ValueError(f"Unknown option '{option}' for balancer '{name}'; valid options are {', '.join(allowed)}.")
    return REGISTRY[name](num_tasks, **options)


__all__ = ["NAMES", "REGISTRY", "Balancer", "GradientManipulation", "LossWeighting", "make", "options_of"]
