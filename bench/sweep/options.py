"""The one option validator: user options (from TOML or Python dicts) -> a library dataclass.

Every registry (attacks, defenses, models) goes through :func:`build`, so an unknown key, a
wrong type or an impossible value becomes the same one-line :class:`ConfigError` naming where
in the config it is, the key, the value and the allowed choices. Types come from the
dataclass annotations; lower bounds from a field's ``metadata={"min": ...}``; everything
else from the class's own ``__post_init__`` (a plain ``ValueError``), which is re-raised
here with the location.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from attacks import checks
from bench.errors import ConfigError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Returns ``value`` converted to annotation ``tp`` (lists -> tuples, int -> float) or
    raises a one-line ConfigError."""
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
    raise ConfigError(f"{where} = {_short(value)} has the wrong type; expected {_type_name(tp)}")


def fields_of(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, dataclasses.Field]:
    """User-settable fields of a dataclass (or flax module): name -> field."""
    return {f.name: f for f in dataclasses.fields(cls)
            if f.name not in exclude and not f.name.startswith("_") and f.init}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _check_min(value: Any, minimum: float | None, where: str) -> None:
    if minimum is None or value is None or isinstance(value, (bool, str)):
        return
    values = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple) and not value:
        raise ConfigError(f"{where} = [] is empty; give at least one value")
    for v in values:
        if isinstance(v, (int, float)) and v < minimum:
            raise ConfigError(f"{where} = {_short(value)} is impossible; values must be ≥ {minimum}")


def build(cls: type, options: Mapping[str, Any], where: str, what: str,
          exclude: tuple[str, ...] = (), int_min: int | None = None, **fixed: Any) -> Any:
    """Instantiates ``cls`` from user ``options``, checking names, types, bounds and values.

    ``where`` locates the options in the config (``[[attacks]] #2``); ``what`` names the
    thing (``attack 'pgd'``; empty for a plain table); ``int_min`` is the lower bound of integer options without a
    ``min`` of their own (model sizes: 1); ``fixed`` are non-user arguments passed through.
    """
    allowed = fields_of(cls, exclude=exclude + tuple(fixed))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in options.items():
        if key not in allowed:
            choices = ", ".join(sorted(allowed)) or "(none)"
            raise ConfigError(f"{where}: {what + ' ' if what else ''}has no option {key!r}; "
                              f"options: {choices}")
        tp = hints[key]
        kwargs[key] = coerce(value, tp, f"{where}: {key}")
        minimum = allowed[key].metadata.get("min")
        if minimum is None and int_min is not None and _is_int_type(tp):
            minimum = int_min
        _check_min(kwargs[key], minimum, f"{where}: {key}")
    try:
        return cls(**kwargs, **fixed)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {what + ': ' if what else ''}{e}") from None


def _is_int_type(tp: Any) -> bool:
    if tp is int:
        return True
    origin = typing.get_origin(tp)
    if origin is tuple:
        return typing.get_args(tp)[0] is int
    if origin in (typing.Union, types.UnionType):
        return any(_is_int_type(a) for a in typing.get_args(tp) if a is not type(None))
    return False


def check_positive(where: str, value: float, allow_zero: bool = False) -> None:
    """:func:`attacks.checks.check_positive` for the app layer's own options (ConfigError)."""
    try:
        checks.check_positive(where, value, allow_zero)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def describe(cls: type, exclude: tuple[str, ...] = ()) -> str:
    """The first docstring line and ``Options: a=1, b='x'``, for ``robustax list``."""
    doc = (cls.__doc__ or "").strip().splitlines()
    summary = doc[0].strip() if doc else cls.__name__
    options = ", ".join(f"{k}={_default(f)!r}" for k, f in fields_of(cls, exclude).items())
    return f"{summary} Options: {options or '(none)'}."
