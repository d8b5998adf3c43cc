"""Sweep configs: TOML -> frozen dataclasses, checked at the boundary.

Unknown keys, wrong types, unknown names, impossible values and empty grids raise a
:class:`~bench.errors.ConfigError` naming where (``[[attacks]] #2``), the key, the value and
the allowed choices. Every entry becomes a typed, checked instance (attack, defense, model
module), and wrappers hold a reference to the training defense whose weights they wrap (or,
for member wrappers such as ``ensemble`` and ``fusion``, to every (model, training defense)
member they combine), so nothing downstream compares label strings or trusts user input.
:mod:`bench.plan` turns the config into the grid of cells.
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
from bench.registry import ATTACKS, DEFENSES, MODELS
from defenses import is_wrapper


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
    eval_examples: int | None = dataclasses.field(default=None, metadata={"min": 1})
    train_examples: int | None = dataclasses.field(default=None, metadata={"min": 1})
    data_dir: str | None = None

    def __post_init__(self):
        from bench.data import DATASETS

        if self.name not in DATASETS:
            raise ValueError(f"name = {self.name!r} is unknown; choose one of: {', '.join(DATASETS)}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How evaluation is batched; results do not depend on it (keys are per example)."""

    batch_size: int = dataclasses.field(default=500, metadata={"min": 1})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A registered model: its checked module (data statistics filled in by the plan)."""

    name: str
    label: str
    module: Any
    options: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class MemberConfig:
    """One member of a member wrapper (ensemble, fusion): a training defense, on a fixed
    model (``"<model>/<defense>"`` in the config) or, when ``model`` is None, on the model of
    each row the wrapper is evaluated on (``"<defense>"``)."""

    model: ModelConfig | None
    defense: DefenseConfig

    @property
    def label(self) -> str:
        if self.model is None:
            return self.defense.label
        return f"{self.model.label}/{self.defense.label}"


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
    """A registered defense: its checked instance and, for a wrapper, the training defense
    whose weights it wraps (``base``) or the trained models it combines (``members``)."""

    name: str
    label: str
    defense: Any
    base: DefenseConfig | None = None
    members: tuple[MemberConfig, ...] = ()

    @property
    def is_wrapper(self) -> bool:
        return self.base is not None or bool(self.members)

    @property
    def fixed_members(self) -> bool:
        """True when the members name their models: the wrapper is one row of its own, not
        one per model of the sweep."""
        return any(m.model is not None for m in self.members)

    @property
    def trained(self) -> DefenseConfig:
        """The training defense whose weights this entry evaluates (itself, or its base);
        member wrappers read several, see ``members``."""
        return self.base if self.base is not None else self


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A registered attack, its typed instance and the ε values it runs at."""

    name: str
    label: str
    attack: Any
    eps: tuple[float, ...]

    @property
    def norm(self) -> str:
        return self.attack.norm


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
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return dict(value)


def _tables(raw: Mapping, key: str) -> list[tuple[str, dict]]:
    """The entries of an array of tables with their locations, ``[[key]] #1`` first."""
    value = raw.get(key)
    if value is None or value == []:
        raise ConfigError(f"the grid is empty: add at least one [[{key}]] table with a name")
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(f"{key} must be an array of tables ([[{key}]]), got {value!r}")
    return [(f"[[{key}]] #{i + 1}", dict(v)) for i, v in enumerate(value)]


def _name_and_label(entry: dict, where: str) -> tuple[str, str]:
    name = entry.pop("name", None)
    if name is None:
        raise ConfigError(f"{where} has no name; add name = \"...\" (see `robustax list`)")
    name = opts.coerce(name, str, f"{where}: name")
    label = opts.coerce(entry.pop("label", name), str, f"{where}: label")
    if not label.strip():
        raise ConfigError(f"{where}: label = {label!r} is empty; give a visible name")
    return name, label


def _unique(labels: list[str], key: str) -> None:
    seen = set()
    for label in labels:
        if label in seen:
            raise ConfigError(f"two [[{key}]] entries are both labelled {label!r}; "
                              f"give each a distinct label = \"...\"")
        seen.add(label)


def _members(names: tuple[str, ...], where: str, dname: str,
             training: Mapping[str, DefenseConfig],
             models: list[ModelConfig]) -> tuple[MemberConfig, ...]:
    """Resolves a member wrapper's ``members``: each a training-defense label (on the row's
    model) or ``"<model label>/<defense label>"`` (fixed); one form for all members."""
    pairs = {f"{m.label}/{t}": (m, training[t]) for m in models for t in training}
    out = []
    for i, name in enumerate(names):
        if name in training:
            out.append(MemberConfig(None, training[name]))
        elif name in pairs:
            out.append(MemberConfig(*pairs[name]))
        else:
            choices = ", ".join([*training, *pairs]) or "(none: add a training defense)"
            raise ConfigError(f"{where} ({dname}): members[{i}] = {name!r} is not a training "
                              f"defense label or <model>/<defense> here; choose one of: {choices}")
    fixed = [m.model is not None for m in out]
    if any(fixed) and not all(fixed):
        raise ConfigError(f"{where} ({dname}): members = {list(names)} mixes defense labels and "
                          f"<model>/<defense> labels; use one form for all members")
    if all(fixed):
        row = "+".join(dict.fromkeys(m.model.label for m in out))
        if len({m.model.label for m in out}) > 1 and row in {m.label for m in models}:
            raise ConfigError(f"{where} ({dname}): its table row {row!r} (the members' models) "
                              f"is also a [[models]] label; relabel that model")
    return tuple(out)


def _resolve_transfers(attack_cfgs: list[AttackConfig], wheres: list[tuple[str, bool]],
                       models: list[ModelConfig],
                       defenses: list[DefenseConfig]) -> list[AttackConfig]:
    """Gives every ``transfer`` entry its crafting attack (the entry its ``attack`` names, by
    ``label`` or ``label/norm``) and checks its surrogates (``<model>/<defense>`` labels of
    this sweep). Without an explicit label a transfer row is labelled
    ``transfer:<attack>@<surrogate>[+<surrogate>...]``, so tables say which surrogate."""
    from attacks import Transfer

    by_label: dict[str, list[AttackConfig]] = {}
    for a in attack_cfgs:
        if not isinstance(a.attack, Transfer):
            by_label.setdefault(a.label, []).append(a)
            by_label.setdefault(f"{a.label}/{a.norm}", []).append(a)
    from bench.plan import defense_label, has_adaptive

    units = [f"{m.label}/{defense_label(d.label, adaptive)}" for m in models for d in defenses
             for adaptive in ((False, True) if d.is_wrapper and has_adaptive(d.defense)
                              else (False,))]
    out = []
    for a, (where, explicit) in zip(attack_cfgs, wheres):
        t = a.attack
        if not isinstance(t, Transfer):
            out.append(a)
            continue
        found = by_label.get(t.attack, [])
        if len(found) != 1:
            choices = ", ".join(k for k, v in by_label.items() if len(v) == 1) or "(none)"
            what = "names several entries" if found else "is not the label of another attack here"
            raise ConfigError(f"{where} (transfer): attack = {t.attack!r} {what}; choose one of: "
                              f"{choices}")
        if not t.surrogate:
            raise ConfigError(f"{where} (transfer): surrogate = [] names no model; give one or "
                              f"more <model>/<defense> labels, e.g. {units[0]!r}")
        for i, s in enumerate(t.surrogate):
            if s not in units:
                raise ConfigError(f"{where} (transfer): surrogate[{i}] = {s!r} is not a "
                                  f"<model>/<defense> label of this sweep; choose one of: "
                                  f"{', '.join(units)}")
        if len(set(t.surrogate)) != len(t.surrogate):
            raise ConfigError(f"{where} (transfer): surrogate = {list(t.surrogate)} repeats a "
                              f"label; list each surrogate once")
        crafter = found[0]
        label = a.label if explicit else f"transfer:{crafter.label}@{'+'.join(t.surrogate)}"
        out.append(AttackConfig(a.name, label, dataclasses.replace(t, _crafter=crafter.attack),
                                a.eps))
    return out


def parse_eps(value: Any, where: str) -> tuple[float, ...]:
    """A list of distinct budgets ≥ 0 (a single number is a list of one)."""
    eps = opts.coerce(value if isinstance(value, (list, tuple)) else [value], tuple[float, ...],
                      f"{where}: eps")
    if not eps:
        raise ConfigError(f"the grid is empty: {where}: eps = [] has no budgets; add at least one")
    for e in eps:
        opts.check_positive(f"{where}: eps", e, allow_zero=True)
    if len(set(eps)) != len(eps):
        raise ConfigError(f"{where}: eps = {list(eps)} repeats a value; list each ε once")
    return eps


def parse_config(raw: Mapping[str, Any]) -> SweepConfig:
    """Checks a parsed TOML document and returns the typed sweep config."""
    raw = dict(raw)
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"unknown top-level key {key!r}; allowed: {', '.join(_TOP_KEYS)}")
    name = opts.coerce(raw.get("name", "sweep"), str, "name")
    seed = opts.coerce(raw.get("seed", 0), int, "seed")
    data = opts.build(DataConfig, _table(raw.get("data", {}), "[data]"), "[data]", "")
    ev = opts.build(EvalConfig, _table(raw.get("eval", {}), "[eval]"), "[eval]", "")

    models = []
    for where, entry in _tables(raw, "models"):
        mname, label = _name_and_label(entry, where)
        module = MODELS.build(mname, entry, where)
        options = tuple(sorted((k, getattr(module, k)) for k in entry))
        models.append(ModelConfig(mname, label, module, options))
    _unique([m.label for m in models], "models")

    parsed = []
    for where, entry in _tables(raw, "defenses"):
        dname, label = _name_and_label(entry, where)
        parsed.append((where, dname, label, DEFENSES.build(dname, entry, where)))
    _unique([label for _, _, label, _ in parsed], "defenses")
    training = {label: DefenseConfig(dname, label, d) for _, dname, label, d in parsed
                if not is_wrapper(d)}
    defenses = []
    for where, dname, label, d in parsed:
        if not is_wrapper(d):
            defenses.append(training[label])
        elif hasattr(d, "members"):
            members = _members(d.members, where, dname, training, models)
            defenses.append(DefenseConfig(dname, label, d, members=members))
        elif d.base not in training:
            raise ConfigError(f"{where} ({dname}) wraps base = {d.base!r}, which is not the label "
                              f"of a training defense here; choose one of: "
                              f"{', '.join(training) or '(none: add a training defense)'}")
        else:
            defenses.append(DefenseConfig(dname, label, d, training[d.base]))

    attack_cfgs, wheres = [], []
    for where, entry in _tables(raw, "attacks"):
        explicit = "label" in entry
        aname, label = _name_and_label(entry, where)
        if "eps" not in entry:
            raise ConfigError(f"{where} ({aname}) has no eps; add eps = [0.0, 0.1, ...]")
        eps = parse_eps(entry.pop("eps"), where)
        attack_cfgs.append(AttackConfig(aname, label, ATTACKS.build(aname, entry, where), eps))
        wheres.append((where, explicit))
    attack_cfgs = _resolve_transfers(attack_cfgs, wheres, models, defenses)

    _unique([f"{a.label}/{a.norm}" for a in attack_cfgs], "attacks")
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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}; fix the syntax there") from None
    return parse_config(raw)
