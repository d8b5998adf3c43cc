"""The defense registry: config names -> defense dataclasses.

A training defense has ``kind = "training"`` and ``train(module, data, key) -> variables``;
an inference wrapper has ``kind = "wrapper"`` and ``wrap(logits_fn) -> logits_fn``.
Adding one is one file and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from bench import options as opts
from bench.errors import ConfigError
from defenses.pgd_at import PGDAT
from defenses.standard import Standard

_REGISTRY: dict[str, type] = {}


def register(name: str, cls: type) -> None:
    """Adds ``cls`` under ``name``; a duplicate name is a programming error."""
    if name in _REGISTRY:
        raise ValueError(f"defense {name!r} is registered twice")
    _REGISTRY[name] = cls


register("standard", Standard)
register("pgd-at", PGDAT)

DEFENSES: Mapping[str, type] = MappingProxyType(_REGISTRY)


def build_defense(name: str, options: Mapping[str, Any] | None = None, where: str = "defense"):
    """Instantiates defense ``name`` from user ``options`` with checked names and types."""
    if name not in DEFENSES:
        raise ConfigError(f"{where}: unknown defense {name!r}; choose one of: "
                          f"{', '.join(sorted(DEFENSES))}")
    return opts.build(DEFENSES[name], options or {}, where, f"defense {name!r}")


def describe_defenses() -> list[tuple[str, str]]:
    """(name, options with defaults) of every defense, for ``robustax list``."""
    return [(n, opts.describe(c)) for n, c in sorted(DEFENSES.items())]
