"""The names users write in configs, mapped to the library's classes.

Adding an attack, defense or model is one file in its package and one ``register`` line
here. Lookups of unknown names raise a one-line :class:`ConfigError` listing what exists;
registering a name twice is a programming error (``ValueError``). :func:`build` turns a name
and user options into a checked instance through the one option validator
(:mod:`bench.sweep.options`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attacks
import defenses
import models
from bench.errors import ConfigError
from bench.sweep import options as opts


class Registry(Mapping[str, type]):
    """A read-mostly mapping from config names to classes."""

    def __init__(self, kind: str, exclude: tuple[str, ...] = (), int_min: int | None = None):
        self.kind = kind
        self.exclude = exclude  # fields set by robustax, not by users
        self.int_min = int_min
        self._items: dict[str, type] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, cls: type) -> type:
        """Adds ``cls`` under ``name`` and returns it."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = cls
        return cls

    def alias(self, alias: str, name: str) -> None:
        """Accepts ``alias`` for the registered ``name`` (a term from the literature); configs
        and records carry the canonical name."""
        if alias in self._items or alias in self._aliases or name not in self._items:
            raise ValueError(f"{self.kind} alias {alias!r} clashes or names no entry")
        self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for (itself unless it is an alias)."""
        return self._aliases.get(name, name)

    def __getitem__(self, name: str) -> type:
        name = self.canonical(name)
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: "
                              f"{', '.join(sorted(self._items))}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def name_of(self, obj: object) -> str:
        """The registered name of an instance's class (its lower-cased class name if none)."""
        for name, cls in self._items.items():
            if type(obj) is cls:
                return name
        return type(obj).__name__.lower()

    def build(self, name: str, options: Mapping[str, Any] | None = None,
              where: str | None = None, **fixed: Any) -> Any:
        """A checked instance of ``name`` from user ``options``; errors name ``where``."""
        where = where or self.kind
        try:
            cls = self[name]
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return opts.build(cls, options or {}, where, f"{self.kind} {name!r}",
                          exclude=self.exclude, int_min=self.int_min, **fixed)

    def describe(self) -> list[tuple[str, str]]:
        """(name, summary and options with defaults) of every entry, for ``robustax list``."""
        aliases = {n: sorted(a for a, m in self._aliases.items() if m == n) for n in self._items}
        return [(n, opts.describe(c, self.exclude)
                 + (f" Also accepted as: {', '.join(aliases[n])}." if aliases[n] else ""))
                for n, c in sorted(self._items.items())]


ATTACKS = Registry("attack")
ATTACKS.register("fgsm", attacks.FGSM)
ATTACKS.register("pgd", attacks.PGD)
ATTACKS.register("apgd-ce", attacks.APGD)
ATTACKS.register("apgd-dlr", attacks.APGDDLR)
ATTACKS.register("apgd-t", attacks.APGDT)
ATTACKS.register("fab", attacks.FAB)
ATTACKS.register("square", attacks.Square)
ATTACKS.register("autoattack", attacks.AutoAttack)
ATTACKS.register("noise", attacks.Noise)
ATTACKS.register("cw", attacks.CW)
ATTACKS.register("deepfool", attacks.DeepFool)
ATTACKS.register("advgan", attacks.AdvGAN)
ATTACKS.register("transfer", attacks.Transfer)
ATTACKS.register("corruption", attacks.Corruption)

DEFENSES = Registry("defense")
DEFENSES.register("standard", defenses.Standard)
DEFENSES.register("pgd-at", defenses.PGDAT)
DEFENSES.register("fgsm-at", defenses.FGSMAT)
DEFENSES.register("fgsm-rs", defenses.FGSMRS)
DEFENSES.register("trades", defenses.TRADES)
DEFENSES.register("distillation", defenses.Distillation)
DEFENSES.register("augment", defenses.Augment)
DEFENSES.register("label-flip", defenses.LabelFlip)
DEFENSES.alias("l-pda", "label-flip")  # label-flipping poisoning ("L-PDA") as the seed calls it
DEFENSES.register("squeeze", defenses.Squeeze)
DEFENSES.register("random-transform", defenses.RandomTransform)
DEFENSES.register("ensemble", defenses.Ensemble)
DEFENSES.register("fusion", defenses.Fusion)

MODEL_FIXED = ("num_classes", "mean", "std")
MODELS = Registry("model", exclude=MODEL_FIXED + ("parent", "name"), int_min=1)
MODELS.register("mlp", models.MLP)
MODELS.register("cnn", models.CNN)
MODELS.register("preact-resnet18", models.PreActResNet18)
MODELS.register("wide-resnet", models.WideResNet)
MODELS.register("resnet18", models.ResNet18)
MODELS.register("dm-wide-resnet", models.DMWideResNet)
