"""Whether a config value fits a type hint, and the hint in words: the one type check behind the
one-sentence refusals of balancer options and of config keys."""

from __future__ import annotations

import numbers
import types
import typing
from collections.abc import Sequence
from typing import Any


def describe(hint: Any) -> str:
    """A type hint in words, for error messages."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arm) for arm in typing.get_args(hint))
    if origin is typing.Literal:
        return " or ".join(map(str, typing.get_args(hint)))
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str:
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return f"a list of {describe(item).removeprefix('a ').removeprefix('an ')}s"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false", type(None): "null"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def choices_of(hint: Any) -> tuple[Any, ...] | None:
    """The values a `Literal` hint allows; None for any other hint."""
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the type hint (an int is fine where a float is expected; a bool is neither)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arm) for arm in typing.get_args(hint))
    if origin is typing.Literal:
        return any(type(value) is type(choice) and value == choice for choice in typing.get_args(hint))
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str:
        if not isinstance(value, (list, tuple)):
            return False
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return all(matches(element, item) for element in value)
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, numbers.Real)
    if hint is int:
        return isinstance(value, numbers.Integral)
    return isinstance(value, origin or hint)
