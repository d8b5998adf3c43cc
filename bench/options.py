"""Checks user options (from TOML or Python) against a frozen dataclass's fields.

Used by every registry (attacks, defenses, models) so that an unknown key, a wrong type
or an impossible value becomes the same one-line error naming the key, the value and the
allowed choices.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from bench.errors import ConfigError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Returns ``value`` converted to annotation ``tp`` or raises a one-line ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        for a in args:
            try:
                return coerce(value, a, where)
            except ConfigError:
                pass
    elif origin is tuple:
        (item_tp, *_) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return tuple(coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{where} = {value!r} has the wrong type; expected {_type_name(tp)}")


def fields_of(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """User-settable fields of a dataclass: name -> (annotation, default)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or f.name.startswith("_") or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out[f.name] = (hints[f.name], default)
    return out


def build(cls: type, options: Mapping[str, Any], where: str, what: str,
          exclude: tuple[str, ...] = (), **fixed: Any) -> Any:
    """Instantiates dataclass ``cls`` from user ``options``, checking names and types.

    ``where`` prefixes error messages (e.g. ``attacks[1]``); ``what`` names the thing
    (e.g. ``attack 'pgd'``); ``fixed`` are non-user arguments passed through.
    """
    allowed = fields_of(cls, exclude=exclude + tuple(fixed))
    kwargs = {}
    for key, value in options.items():
        if key not in allowed:
            choices = ", ".join(sorted(allowed)) or "(none)"
            raise ConfigError(f"{where}: {what} has no option {key!r}; options: {choices}")
        kwargs[key] = coerce(value, allowed[key][0], f"{where}.{key}")
    try:
        return cls(**kwargs, **fixed)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises a one-line ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} = {value!r} is not allowed; choose one of: {', '.join(choices)}")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raises a one-line ConfigError unless ``value`` > 0 (or ≥ 0)."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} = {value!r} is impossible; it must be {bound}")


def describe(cls: type, exclude: tuple[str, ...] = ()) -> str:
    """The first docstring line and ``Options: a=1, b='x'``, for ``robustax list``."""
    doc = (cls.__doc__ or "").strip().splitlines()
    summary = doc[0].strip() if doc else cls.__name__
    options = ", ".join(f"{k}={v[1]!r}" for k, v in fields_of(cls, exclude).items())
    return f"{summary} Options: {options or '(none)'}."
