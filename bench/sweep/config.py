"""Sweep configs: TOML -> frozen dataclasses, checked at the boundary.

Unknown keys, wrong types, unknown names, impossible values and empty grids raise a
:class:`~bench.errors.ConfigError` naming where (``[[attacks]] #2``), the key, the value and
the allowed choices. Every entry becomes a typed, checked instance (attack, defense, model
module), and wrappers hold a reference to the training defense whose weights they wrap (or,
for member wrappers such as ``ensemble`` and ``fusion``, to every (model, training defense)
member they combine), so nothing downstream compares label strings or trusts user input.
:mod:`bench.sweep.plan` turns the config into the grid of cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from attacks import Transfer, checks
from attacks import corruption as corr
from bench.errors import ConfigError
from bench.sweep import options as opts
from bench.sweep import weights as wts
from bench.sweep.data import CIFAR10_C_PATTERN, DATASETS, cifar10_c_problem, known
from bench.sweep.registry import ATTACKS, DEFENSES, MODEL_FIXED, MODELS
from defenses import is_wrapper


def defense_label(label: str, adaptive: bool) -> str:
    """The row label of a defense: its config label, marked for the adaptive evaluation."""
    return f"{label} (adaptive)" if adaptive else label


def has_adaptive(defense: Any) -> bool:
    """Whether a wrapper gets an adaptive row: it has ``adaptive`` and does not declare
    itself differentiable (``needs_adaptive = False``, e.g. fusion's mixture)."""
    return hasattr(defense, "adaptive") and getattr(defense, "needs_adaptive", True)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set, and how much of it.

    Attributes:
      name: ``digits``, ``mnist5k``, ``tfds:<name>`` (see ``robustax list``) or
        ``npz:<path>.npz`` (arrays ``x_test``, ``y_test``, optionally ``x_train``, ``y_train``).
      eval_examples: evaluate on the first n test examples (all when unset).
      train_examples: train on the first n training examples (all when unset).
      data_dir: TFDS data directory holding prepared (array_record) data sets.
      stream: read a TFDS test split from disk one eval batch at a time instead of loading
        it whole (for evaluation sets larger than memory); results are the same.
    """

    name: str = "digits"
    eval_examples: int | None = dataclasses.field(default=None, metadata={"min": 1})
    train_examples: int | None = dataclasses.field(default=None, metadata={"min": 1})
    data_dir: str | None = None
    stream: bool = False

    def __post_init__(self):
        if self.name.startswith("npz:"):
            if not self.name[4:].endswith(".npz"):
                raise ValueError(f"name = {self.name!r}: give the path of a .npz file after "
                                 f"'npz:' (e.g. \"npz:data/cifar10_test.npz\")")
        elif problem := cifar10_c_problem(self.name):
            raise ValueError(problem)
        elif not known(self.name):
            raise ValueError(f"name = {self.name!r} is unknown; choose one of: "
                             f"{', '.join(DATASETS)}, {CIFAR10_C_PATTERN}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How evaluation is done.

    Attributes:
      batch_size: examples per compiled call; results do not depend on it (keys are per
        example).
      draws: a random model (a ``random-transform`` row, any key-dependent ``logits_fn``) is
        scored over this many independent draws: an example counts as correct (clean) or
        robust (under an attack) only if it is classified correctly in every draw. Part of
        the identity of a random model's cells; deterministic models ignore it.
    """

    batch_size: int = dataclasses.field(default=500, metadata={"min": 1})
    draws: int = 10

    def __post_init__(self):
        checks.check_draws("draws", self.draws)  # the bound the engine checks for the API too


@dataclasses.dataclass(frozen=True)
class SecurityConfig:
    """Artifact security of a sweep (``[security]``; see ``bench.security.artifacts``).

    Attributes:
      signing_key: an Ed25519 ``signing.key`` file (mode 0600) or ``env:VAR``: every checkpoint
        written is signed and the results ledger's head is signed.
      encryption_key: an ``encryption.key`` file (0600), ``env:VAR`` or ``passphrase`` (read from
        ROBUSTAX_PASSPHRASE): checkpoints are written encrypted (``*.enc``, AES-256-GCM) and
        decrypted in memory only.
      trust: public keys (``signing.pub``) a checkpoint read from disk must be signed by; a
        checkpoint that does not verify is refused. Default: the signing key's own, when set.
    Paths are relative to the working directory; ``~`` is expanded.
    """

    signing_key: str | None = None
    encryption_key: str | None = None
    trust: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.signing_key or self.encryption_key or self.trust)


@dataclasses.dataclass(frozen=True)
class WeightsConfig:
    """Weights a model entry loads instead of training: the file or Orbax directory as
    written in the config and resolved, its sha256, and the normalisation the model applies
    (``None`` for a user module without ``mean``/``std`` fields, which normalises itself)."""

    path: str
    resolved: Path
    sha256: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A registered model: its checked module (data statistics filled in by the plan), and
    the weights it loads when it is not trained here."""

    name: str
    label: str
    module: Any
    options: tuple[tuple[str, Any], ...] = ()
    weights: WeightsConfig | None = None


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
    """A registered attack, its typed instance and the ε values it runs at.

    ``explicit``: the options the config wrote (the rest are the attack's defaults);
    ``preset``: the options :meth:`for_random_model` set because the row is random."""

    name: str
    label: str
    attack: Any
    eps: tuple[float, ...]
    explicit: frozenset[str] = frozenset()
    preset: tuple[tuple[str, Any], ...] = ()
    # Corruptions of the entry's ``kinds`` that cannot be applied, with why (recorded in the
    # details of each of its cells, so a skipped corruption is never silently missing).
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def norm(self) -> str:
        return self.attack.norm

    def for_random_model(self) -> AttackConfig:
        """This attack as run on a random model: the options its class presets for random
        models (``random_options``: AutoAttack's ``version = "rand"``, EOT), except those the
        config wrote itself; itself when nothing changes."""
        preset = tuple((k, v) for k, v in getattr(type(self.attack), "random_options", ())
                       if k not in self.explicit and getattr(self.attack, k) != v)
        if not preset:
            return self
        return dataclasses.replace(self, attack=dataclasses.replace(self.attack, **dict(preset)),
                                   preset=preset)


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
    security: SecurityConfig = SecurityConfig()
    # Where relative paths of the config (weights, npz data) start: the config file's folder.
    base_dir: Path | None = dataclasses.field(default=None, compare=False)

    def config_id(self) -> str:
        """A short hash of the config as parsed (what determines the numbers: not
        ``[security]``, which only says how artifacts are protected)."""
        source = {k: v for k, v in self.source.items() if k != "security"}
        blob = json.dumps(source, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


_TOP_KEYS = ("name", "seed", "data", "models", "defenses", "attacks", "eval", "security")


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


def _name_and_label(entry: dict, where: str, registry=None) -> tuple[str, str]:
    """(canonical name, label) of an entry; an alias (``l-pda``) becomes the registered name
    it stands for, and so does the default label."""
    name = entry.pop("name", None)
    if name is None:
        raise ConfigError(f"{where} has no name; add name = \"...\" (see `robustax list`)")
    name = opts.coerce(name, str, f"{where}: name")
    if registry is not None:
        name = registry.canonical(name)
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

    by_label: dict[str, list[AttackConfig]] = {}
    for a in attack_cfgs:
        if not isinstance(a.attack, Transfer):
            by_label.setdefault(a.label, []).append(a)
            by_label.setdefault(f"{a.label}/{a.norm}", []).append(a)

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
        out.append(dataclasses.replace(a, label=label,
                                       attack=dataclasses.replace(t, _crafter=crafter.attack)))
    return out


PRETRAINED = "pretrained"  # the defense row of models evaluated with the weights they load
_NORMALISATION = ("mean", "std")


def import_module_class(spec: str, where: str, base_dir: Path | None = None) -> type:
    """The flax.linen Module class named ``"package.module:Class"``; the config file's folder
    is searched too, so a module next to the config imports without setting PYTHONPATH."""
    import importlib
    import inspect
    import sys

    import flax.linen as nn

    mod_name, sep, cls_name = spec.partition(":")
    if not sep or not mod_name or not cls_name.isidentifier():
        raise ConfigError(f"{where}: module = {spec!r} is not an import path; write "
                          f"\"package.module:ClassName\"")
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"{where}: module = {spec!r} cannot be imported ({e}); put its "
                          f"package on PYTHONPATH or next to the config file") from None
    finally:
        if added:
            sys.path.remove(str(base_dir))
    cls = getattr(mod, cls_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ConfigError(f"{where}: module = {spec!r} is not a flax.linen Module class in "
                          f"{mod_name}; name a linen Module (NNX modules: bench.evaluate(model, ...))")
    call = inspect.signature(cls.__call__).parameters
    if "train" not in call:
        raise ConfigError(f"{where}: module = {spec!r}: its __call__ has no train argument; write "
                          f"__call__(self, x, train: bool = False) (train switches BatchNorm "
                          f"and dropout to training mode)")
    return cls


def _model(entry: dict, where: str, base_dir: Path | None) -> ModelConfig:
    """A [[models]] entry: a registered model or a user's module, trained here or loading
    ``weights`` with its normalisation stated."""

    weights = entry.pop("weights", None)
    norm = {k: entry.pop(k) for k in _NORMALISATION if k in entry}
    spec = entry.pop("module", None)
    if spec is not None:
        spec = opts.coerce(spec, str, f"{where}: module")
        entry.setdefault("name", spec)
    mname, label = _name_and_label(entry, where, MODELS)
    if spec is None:
        module = MODELS.build(mname, entry, where)
    else:
        cls = import_module_class(spec, where, base_dir)
        module = opts.build(cls, entry, where, f"module {spec!r}",
                            exclude=MODEL_FIXED + ("parent", "name"), int_min=1)
    options = tuple(sorted((k, getattr(module, k)) for k in entry))
    if spec is not None:
        options = (("module", spec),) + options
    if weights is None:
        if norm:
            raise ConfigError(f"{where}: {', '.join(norm)} are set from the training data for a "
                              f"model trained here; state them only with weights = \"...\"")
        return ModelConfig(mname, label, module, options)

    path_text = opts.coerce(weights, str, f"{where}: weights")
    path = Path(path_text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    wts.check_exists(path, where)
    meta = wts.metadata(path)
    if meta.get("model") not in (None, mname):
        raise ConfigError(f"{where}: weights {path_text!r} were saved for model "
                          f"{meta['model']!r}, not {mname!r}; set name = \"{meta['model']}\"")
    for k, v in (meta.get("model_options") or {}).items():
        have = getattr(module, k, None)
        if have is not None and json.dumps(have) != json.dumps(v):
            raise ConfigError(f"{where}: weights {path_text!r} were saved with {k} = "
                              f"{json.dumps(v)}, the entry has {json.dumps(have)}; set "
                              f"{k} = {json.dumps(v)}")
    fields = {f.name for f in dataclasses.fields(module)}
    stated = {}
    for k in _NORMALISATION:
        if k not in fields:
            if k in norm:
                raise ConfigError(f"{where}: the module has no {k} field (it normalises inside); "
                                  f"remove {k}")
            continue
        value = norm.get(k, meta.get(k))
        if value is None:
            raise ConfigError(f"{where}: weights {path_text!r} do not say how inputs are normalised;"
                              f" state mean = [...] and std = [...] (per channel, for [0, 1] "
                              f"pixels; mean = [0.0], std = [1.0] if the model takes raw pixels)")
        value = opts.coerce(value if isinstance(value, (list, tuple)) else [value],
                            tuple[float, ...], f"{where}: {k}")
        if not value or (k == "std" and min(value) <= 0):
            raise ConfigError(f"{where}: {k} = {list(value)} is impossible; give one value per "
                              f"channel{', all > 0' if k == 'std' else ''}")
        if k in norm and k in meta and (len(meta[k]) != len(value) or
                                        not np.allclose(meta[k], value, rtol=0, atol=1e-6)):
            raise ConfigError(f"{where}: {k} = {list(value)} differs from the {meta[k]} stored "
                              f"with the weights; remove {k} to use the stored one")
        stated[k] = value
    digest = wts.digest(path)
    w = WeightsConfig(path_text, path.resolve(), digest, stated.get("mean"), stated.get("std"))
    options += (("weights", path_text), ("weights_sha256", digest),
                *((k, tuple(v)) for k, v in stated.items()))
    return ModelConfig(mname, label, module, options, w)


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


def check_severities(eps: tuple[float, ...], where: str) -> None:
    """A corruption's budgets are severities: the integers 0 (clean) to 5."""
    for e in eps:
        if e != int(e) or not 0 <= e <= 5:
            raise ConfigError(f"{where} (corruption): eps = {e!r} is not a severity; severities "
                              f"are the integers 0 (clean), 1, 2, 3, 4, 5")


def corruption_attacks(entry: dict, where: str, label: str, eps: tuple[float, ...]
                 ) -> list[AttackConfig]:
    """A ``corruption`` entry expanded into one attack per corruption of its ``kinds``
    (default: the 15 standard ones), labelled ``<label>-<kind>``, at the severities ``eps``
    (integers 0..5; 0 = clean). Kinds robustax cannot apply are skipped and named, with the
    reason, in every cell of the entry (``details.skipped``)."""
    if "kind" in entry:
        raise ConfigError(f"{where} (corruption): write kinds = [{json.dumps(entry['kind'])}], "
                          f"a list, not kind")
    kinds = opts.coerce(entry.pop("kinds", list(corr.KINDS)), tuple[str, ...], f"{where}: kinds")
    if not kinds:
        raise ConfigError(f"the grid is empty: {where} (corruption): kinds = [] names no "
                          f"corruption; choose from: {', '.join(corr.KINDS)}")
    for k in kinds:
        if k not in corr.KINDS:
            raise ConfigError(f"{where} (corruption): kinds has {k!r}, not a standard "
                              f"corruption; choose from: {', '.join(corr.KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"{where} (corruption): kinds = {list(kinds)} repeats a corruption; "
                          f"list each once")
    check_severities(eps, where)
    skipped = tuple((k, corr.NOT_PORTED[k]) for k in kinds if not corr.available(k))
    run = [k for k in kinds if corr.available(k)]
    if not run:
        raise ConfigError(f"the grid is empty: {where} (corruption): none of kinds = "
                          f"{list(kinds)} can be applied ({'; '.join(f'{k}: {r}' for k, r in skipped)}); "
                          f"choose from: {', '.join(k for k in corr.KINDS if corr.available(k))}")
    return [AttackConfig("corruption", f"{label}-{k}",
                         ATTACKS.build("corruption", {**entry, "kind": k}, where), eps,
                         frozenset(entry), skipped=skipped)
            for k in run]


def check_eps_range(eps: tuple[float, ...], norm: str, where: str,
                    image_shape: tuple[int, ...] | None = None) -> None:
    """Every ε of an attack within its norm's meaningful range (L∞ ≤ 1; L2 ≤ √d and L1 ≤ d
    once the image shape is known): :func:`attacks.checks.check_eps` as a ConfigError."""

    for e in eps:
        try:
            checks.check_eps(f"{where}: eps", e, norm, image_shape)
        except ValueError as err:
            raise ConfigError(str(err)) from None


def parse_config(raw: Mapping[str, Any], base_dir: str | Path | None = None) -> SweepConfig:
    """Checks a parsed TOML document and returns the typed sweep config; relative paths in
    it (weights, ``npz:`` data) start at ``base_dir`` (the current directory when None)."""
    base_dir = Path(base_dir) if base_dir is not None else None
    raw = dict(raw)
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"unknown top-level key {key!r}; allowed: {', '.join(_TOP_KEYS)}")
    name = opts.coerce(raw.get("name", "sweep"), str, "name")
    seed = opts.coerce(raw.get("seed", 0), int, "seed")
    data = opts.build(DataConfig, _table(raw.get("data", {}), "[data]"), "[data]", "")
    ev = opts.build(EvalConfig, _table(raw.get("eval", {}), "[eval]"), "[eval]", "")
    security = opts.build(SecurityConfig, _table(raw.get("security", {}), "[security]"),
                          "[security]", "")

    models = []
    for where, entry in _tables(raw, "models"):
        models.append(_model(entry, where, base_dir))
    _unique([m.label for m in models], "models")

    parsed = []
    all_pretrained = all(m.weights is not None for m in models)
    for where, entry in ([] if all_pretrained and not raw.get("defenses")
                         else _tables(raw, "defenses")):
        dname, label = _name_and_label(entry, where, DEFENSES)
        parsed.append((where, dname, label, DEFENSES.build(dname, entry, where)))
    _unique([label for _, _, label, _ in parsed], "defenses")
    if any(m.weights is not None for m in models) and PRETRAINED in [p[2] for p in parsed]:
        raise ConfigError(f"a [[defenses]] entry is labelled {PRETRAINED!r}, the row of models "
                          f"with weights; give it another label")
    trained_models = [m for m in models if m.weights is None]
    training = {label: DefenseConfig(dname, label, d) for _, dname, label, d in parsed
                if not is_wrapper(d)}
    defenses = []
    for where, dname, label, d in parsed:
        if not is_wrapper(d):
            defenses.append(training[label])
        elif hasattr(d, "members"):
            members = _members(d.members, where, dname, training, trained_models)
            defenses.append(DefenseConfig(dname, label, d, members=members))
        elif d.base == PRETRAINED and any(m.weights is not None for m in models):
            # a wrapper of the weights models load (their 'pretrained' row)
            defenses.append(DefenseConfig(dname, label, d, DefenseConfig(PRETRAINED, PRETRAINED,
                                                                         None)))
        elif d.base not in training:
            raise ConfigError(f"{where} ({dname}) wraps base = {d.base!r}, which is not the label "
                              f"of a training defense here; choose one of: "
                              f"{', '.join(training) or '(none: add a training defense)'}")
        else:
            defenses.append(DefenseConfig(dname, label, d, training[d.base]))

    attack_cfgs, wheres = [], []
    for where, entry in _tables(raw, "attacks"):
        explicit = "label" in entry
        aname, label = _name_and_label(entry, where, ATTACKS)
        if "eps" not in entry:
            raise ConfigError(f"{where} ({aname}) has no eps; add eps = [0.0, 0.1, ...]")
        eps = parse_eps(entry.pop("eps"), where)
        if aname == "corruption":
            expanded = corruption_attacks(entry, where, label, eps)
            attack_cfgs += expanded
            wheres += [(where, True)] * len(expanded)
            continue
        attack_cfgs.append(AttackConfig(aname, label, ATTACKS.build(aname, entry, where), eps,
                                        frozenset(entry)))
        wheres.append((where, explicit))
    attack_cfgs = _resolve_transfers(attack_cfgs, wheres, models, defenses)
    for a, (where, _) in zip(attack_cfgs, wheres):  # after transfers know their crafter's norm
        check_eps_range(a.eps, a.norm, f"{where} ({a.name})")

    _unique([f"{a.label}/{a.norm}" for a in attack_cfgs], "attacks")
    return SweepConfig(name, seed, data, tuple(models), tuple(defenses), tuple(attack_cfgs), ev,
                       source=raw, security=security, base_dir=base_dir)


def read_config_text(path: str | Path) -> str:
    """The text of a config file: a missing path, a directory, an unreadable, binary or
    non-UTF-8 file is a one-line ConfigError naming the path and the fix."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory; pass the path of a .toml sweep "
                          f"config (e.g. bench/configs/default.toml)")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a .toml "
                          f"sweep config (e.g. bench/configs/default.toml)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config {str(path)!r} cannot be read ({e.strerror}); check its "
                          f"permissions") from None
    if b"\0" in data:
        raise ConfigError(f"config {str(path)!r} is a binary file (it contains NUL bytes), not "
                          f"a TOML text file; pass the .toml config")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {str(path)!r} is not UTF-8 text (byte 0x{data[e.start]:02x} "
                          f"at offset {e.start}); save it as UTF-8") from None


def load_config(path: str | Path, text: str | None = None) -> SweepConfig:
    """Reads and checks a TOML sweep config (``text``: its contents, already read with
    :func:`read_config_text`); every problem is a one-line ConfigError."""
    path = Path(path)
    if text is None:
        text = read_config_text(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}; fix the syntax there") from None
    return parse_config(raw, base_dir=path.resolve().parent)
