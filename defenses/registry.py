"""The defense registry: config names -> defense dataclasses.

A training defense has ``kind = "training"`` and ``train(module, data, key) -> variables``;
an inference wrapper has ``kind = "wrapper"``, a ``base`` option and ``wrap(logits_fn) ->
logits_fn`` (and optionally ``adaptive``); see :mod:`defenses.base`. Adding one is one file
and one line here: the runner handles both kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench import options as opts
from bench.errors import ConfigError
from bench.registry import Registry
from defenses.pgd_at import PGDAT
from defenses.standard import Standard

DEFENSES = Registry("defense")
DEFENSES.register("standard", Standard)
DEFENSES.register("pgd-at", PGDAT)


def build_defense(name: str, options: Mapping[str, Any] | None = None, where: str = "defense"):
    """Instantiates defense ``name`` from user ``options`` with checked names and types."""
    try:
        cls = DEFENSES[name]
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return opts.build(cls, options or {}, where, f"defense {name!r}")


def describe_defenses() -> list[tuple[str, str]]:
    """(name, options with defaults) of every defense, for ``robustax list``."""
    return [(n, opts.describe(c)) for n, c in sorted(DEFENSES.items())]
