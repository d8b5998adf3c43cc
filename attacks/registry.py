"""The attack registry: config names -> attack dataclasses.

Adding an attack is one file with a frozen dataclass implementing
``attack(logits_fn, params, x, y, eps, key) -> x_adv`` and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attacks.fgsm import FGSM
from attacks.pgd import PGD
from bench import options as opts
from bench.registry import Registry

ATTACKS = Registry("attack")
ATTACKS.register("fgsm", FGSM)
ATTACKS.register("pgd", PGD)


def attack_class(name: str) -> type:
    """The dataclass registered as ``name`` or a one-line error listing the attacks."""
    return ATTACKS[name]


def build_attack(name: str, options: Mapping[str, Any] | None = None, where: str = "attack"):
    """Instantiates attack ``name`` from user ``options`` with checked names and types."""
    return opts.build(attack_class(name), options or {}, where, f"attack {name!r}")


def attack_name(attack: Any) -> str:
    """The registry name of an attack instance."""
    return ATTACKS.name_of(attack)


def describe_attacks() -> list[tuple[str, str]]:
    """(name, options with defaults) of every attack, for ``robustax list``."""
    return [(n, opts.describe(c)) for n, c in sorted(ATTACKS.items())]
