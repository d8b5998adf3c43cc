"""Sweep configs: TOML -> frozen dataclasses, checked at the boundary.

Unknown keys, wrong types, unknown names, impossible values and empty grids raise a
:class:`~bench.errors.ConfigError` naming the key, the value and the allowed choices, so
nothing inside the runner compares strings or trusts user input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import options as opts
from bench.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set, and how much of it.

    Attributes:
      name: ``digits``, ``mnist5k`` or ``tfds:<name>`` (see ``robustax list``).
      eval_examples: evaluate on the first n test examples (all when unset).
      train_examples: train on the first n training examples (all when unset).
      data_dir: TFDS data directory holding prepared (array_record) data sets.
    """

    name: str = "digits"
    eval_examples: int | None = None
    train_examples: int | None = None
    data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How evaluation is batched; results do not depend on it (keys are per example)."""

    batch_size: int = 500


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A registered model and its options (``robustax list`` shows them)."""

    name: str
    label: str
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, num_classes: int, mean, std):
        from models import build_model

        return build_model(self.name, num_classes=num_classes, mean=tuple(mean), std=tuple(std),
                           **dict(self.options))


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
    """A registered defense; ``defense`` is its typed, checked instance."""

    name: str
    label: str
    defense: Any


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A registered attack, its typed instance and the ε values it runs at."""

    name: str
    label: str
    attack: Any
    eps: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: data × models × defenses × attacks × ε."""

    name: str
    seed: int
    data: DataConfig
    models: tuple[ModelConfig, ...]
    defenses: tuple[DefenseConfig, ...]
    attacks: tuple[AttackConfig, ...]
    eval: EvalConfig = EvalConfig()
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def config_id(self) -> str:
        """A short hash of the config as parsed (what determines the numbers)."""
        blob = json.dumps(self.source, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


_TOP_KEYS = ("name", "seed", "data", "models", "defenses", "attacks", "eval")


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table ([{where}]), got {value!r}")
    return dict(value)


def _tables(raw: Mapping, key: str) -> list[dict]:
    value = raw.get(key)
    if value is None:
        raise ConfigError(f"the grid is empty: add at least one [[{key}]] table with a name")
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(f"{key} must be an array of tables ([[{key}]]), got {value!r}")
    if not value:
        raise ConfigError(f"the grid is empty: add at least one [[{key}]] table with a name")
    return [dict(v) for v in value]


def _name_and_label(entry: dict, where: str) -> tuple[str, str]:
    name = entry.pop("name", None)
    if name is None:
        raise ConfigError(f"{where} has no name; add name = \"...\" (see `robustax list`)")
    name = opts.coerce(name, str, f"{where}.name")
    label = opts.coerce(entry.pop("label", name), str, f"{where}.label")
    return name, label


def _unique(labels: list[str], key: str) -> None:
    seen = set()
    for label in labels:
        if label in seen:
            raise ConfigError(f"two [[{key}]] entries are both labelled {label!r}; "
                              f"give each a distinct label = \"...\"")
        seen.add(label)


def parse_config(raw: Mapping[str, Any]) -> SweepConfig:
    """Checks a parsed TOML document and returns the typed sweep config."""
    from attacks import build_attack
    from defenses import build_defense
    from defenses.base import is_wrapper
    from models import build_model

    raw = dict(raw)
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"unknown top-level key {key!r}; allowed: {', '.join(_TOP_KEYS)}")
    name = opts.coerce(raw.get("name", "sweep"), str, "name")
    seed = opts.coerce(raw.get("seed", 0), int, "seed")
    data = opts.build(DataConfig, _table(raw.get("data", {}), "data"), "data", "[data]")
    from bench.data import DATASETS

    if data.name not in DATASETS:
        raise ConfigError(f"data.name = {data.name!r} is unknown; choose one of: {', '.join(DATASETS)}")
    for key in ("eval_examples", "train_examples"):
        if getattr(data, key) is not None:
            opts.check_positive(f"data.{key}", getattr(data, key))
    ev = opts.build(EvalConfig, _table(raw.get("eval", {}), "eval"), "eval", "[eval]")
    opts.check_positive("eval.batch_size", ev.batch_size)

    models = []
    for i, entry in enumerate(_tables(raw, "models")):
        where = f"models[{i}]"
        mname, label = _name_and_label(entry, where)
        try:
            build_model(mname, num_classes=10, mean=(0.0,), std=(1.0,), **entry)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        models.append(ModelConfig(mname, label, tuple(sorted(entry.items()))))

    defenses = []
    for i, entry in enumerate(_tables(raw, "defenses")):
        where = f"defenses[{i}]"
        dname, label = _name_and_label(entry, where)
        defenses.append(DefenseConfig(dname, label, build_defense(dname, entry, where)))

    attack_cfgs = []
    for i, entry in enumerate(_tables(raw, "attacks")):
        where = f"attacks[{i}]"
        aname, label = _name_and_label(entry, where)
        if "eps" not in entry:
            raise ConfigError(f"{where} ({aname}) has no eps; add eps = [0.0, 0.1, ...]")
        eps_raw = entry.pop("eps")
        eps = opts.coerce(eps_raw if isinstance(eps_raw, list) else [eps_raw], tuple[float, ...],
                          f"{where}.eps")
        if not eps:
            raise ConfigError(f"the grid is empty: {where}.eps = [] has no budgets; add at least one")
        for e in eps:
            opts.check_positive(f"{where}.eps", e, allow_zero=True)
        if len(set(eps)) != len(eps):
            raise ConfigError(f"{where}.eps = {list(eps)} repeats a value; list each ε once")
        attack = build_attack(aname, entry, where)
        attack_cfgs.append(AttackConfig(aname, label, attack, tuple(eps)))

    _unique([m.label for m in models], "models")
    _unique([d.label for d in defenses], "defenses")
    training = [d.label for d in defenses if not is_wrapper(d.defense)]
    for i, d in enumerate(defenses):
        if is_wrapper(d.defense) and d.defense.base not in training:
            raise ConfigError(f"defenses[{i}] ({d.name}) wraps base = {d.defense.base!r}, which is "
                              f"not the label of a training defense here; choose one of: "
                              f"{', '.join(training) or '(none: add a training defense)'}")
    _unique([f"{a.label}/{a.attack.norm}" for a in attack_cfgs], "attacks")
    return SweepConfig(name, seed, data, tuple(models), tuple(defenses), tuple(attack_cfgs), ev,
                       source=raw)


def load_config(path: str | Path) -> SweepConfig:
    """Reads and checks a TOML sweep config; every problem is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a .toml "
                          f"sweep config (e.g. bench/configs/default.toml)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}; fix the syntax there") from None
    return parse_config(raw)
