"""The attack registry: config names -> attack dataclasses.

Adding an attack is one file with a frozen dataclass implementing
``attack(logits_fn, params, x, y, eps, key) -> x_adv`` and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from attacks.fgsm import FGSM
from attacks.pgd import PGD
from bench import options as opts
from bench.errors import ConfigError

_REGISTRY: dict[str, type] = {}


def register(name: str, cls: type) -> None:
    """Adds ``cls`` under ``name``; a duplicate name is a programming error."""
    if name in _REGISTRY:
        raise ValueError(f"attack {name!r} is registered twice")
    _REGISTRY[name] = cls


register("fgsm", FGSM)
register("pgd", PGD)

ATTACKS: Mapping[str, type] = MappingProxyType(_REGISTRY)


def attack_class(name: str) -> type:
    """The dataclass registered as ``name`` or a one-line error listing the attacks."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]


def build_attack(name: str, options: Mapping[str, Any] | None = None, where: str = "attack"):
    """Instantiates attack ``name`` from user ``options`` with checked names and types."""
    return opts.build(attack_class(name), options or {}, where, f"attack {name!r}")


def attack_name(attack: Any) -> str:
    """The registry name of an attack instance (its class name, lower-cased, if unregistered)."""
    for name, cls in ATTACKS.items():
        if type(attack) is cls:
            return name
    return type(attack).__name__.lower()


def describe_attacks() -> list[tuple[str, str]]:
    """(name, options with defaults) of every attack, for ``robustax list``."""
    return [(n, opts.describe(c)) for n, c in sorted(ATTACKS.items())]
