"""The table of balancers by name. Each method's module registers its class with `@register`;
importing `mtrl_famo.balancers` imports every module of the package, so a new method is one new
file (plus its `configs/balancer/<name>.yaml`) and nothing else changes."""

from __future__ import annotations

from collections.abc import Callable

from mtrl_famo.balancers.base import Balancer

REGISTRY: dict[str, type[Balancer]] = {}


def register(name: str) -> Callable[[type[Balancer]], type[Balancer]]:
    """Class decorator: make the balancer reachable as `balancer=<name>` and `make(name, ...)`."""

    def add(cls: type[Balancer]) -> type[Balancer]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"Two balancers are registered as '{name}': {REGISTRY[name].__name__} and {cls.__name__}.")
        REGISTRY[name] = cls
        cls.name = name
        return cls

    return add
