"""The sweep plan: a config turned once into the typed grid that the runner walks.

A plan holds, for one config and data set, every training (model × training defense: one
checkpoint), every evaluation unit (model × defense × naive/adaptive, with the training it
reads) and every cell (unit × attack × ε, or the unit's clean cell) with its id and the
names its PRNG key derives from. The runner executes it; the report reads its order from
``plan.json`` in the run directory instead of re-deriving it from the config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from typing import Any

import jax

from bench.store.io import slug
from bench.store.records import CLEAN
from bench.sweep.config import (
    PRETRAINED,
    AttackConfig,
    DefenseConfig,
    ModelConfig,
    SweepConfig,
    defense_label,
    has_adaptive,
)
from defenses import is_random


def numerics_of(cls: type) -> int | str:
    """The declared numerics version of an attack, model or defense class (its ``numerics``
    class attribute, bumped in the commit of any change that can move its numbers). A user's
    class that declares none (``module = "pkg.mod:Net"``) is keyed by a digest of its module's
    source instead: robustax cannot know which of its edits move numbers."""
    version = getattr(cls, "numerics", None)
    if isinstance(version, int):
        return version
    if cls.__module__.split(".")[0] in ("attacks", "models", "defenses"):
        # Registered classes declare it (tests/test_numerics.py); a helper dataclass of ours
        # nested in their options is covered by its owner's version, never by source bytes.
        return 1
    try:
        source = inspect.getsource(inspect.getmodule(cls))
    except (OSError, TypeError):
        return f"{cls.__module__}.{cls.__qualname__}"
    return "src:" + hashlib.sha256(source.encode()).hexdigest()[:12]


def stable_hash(obj: Any, n: int = 12) -> str:
    """A short sha256 of a JSON-serialisable object. A dataclass (an attack's or defense's
    options) counts as its fields plus its class's numerics version: not its class or module
    name, so renaming or moving code leaves every hash unchanged."""
    def default(o):
        if dataclasses.is_dataclass(o):
            return {"numerics": numerics_of(type(o)),
                    **{f.name: getattr(o, f.name) for f in dataclasses.fields(o)}}
        return str(o)

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=default).encode()).hexdigest()[:n]


def model_identity(m: ModelConfig) -> list:
    """What of a model entry determines its numbers: registry name, options, numerics."""
    return [m.name, list(m.options), numerics_of(type(m.module))]


def key_for(seed: int, *parts: str) -> jax.Array:
    """A PRNG key derived from the seed and names (not grid positions), so adding a model or
    an attack to a config leaves every other cell's randomness unchanged."""
    digest = int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:8], 16)
    return jax.random.fold_in(jax.random.key(seed), digest)


def random_identity(random: bool, draws: int) -> dict:
    """The identity part of a random model's cells: how many draws they are scored over (a
    deterministic model's cells get none, so their ids are those they always had)."""
    return {"draws": draws} if random else {}


def cell_id(model: str, defense: str, attack: str, norm: str, eps: float, identity: Any) -> str:
    """The one cell-id format: readable labels (slugged) plus a hash of the cell's identity."""
    what = CLEAN if attack == CLEAN else f"{slug(attack)}-{norm}"
    return f"{slug(model)}.{slug(defense)}.{what}.eps{eps:g}.{stable_hash(identity, 10)}"


@dataclasses.dataclass(frozen=True)
class Training:
    """One checkpoint: a model trained by a training defense."""

    model: ModelConfig
    defense: DefenseConfig
    digest: str  # hash of everything that determines the weights

    @property
    def file_name(self) -> str:
        return f"{slug(self.model.label)}.{slug(self.defense.label)}.{self.digest}.safetensors"

    @property
    def key_parts(self) -> tuple[str, ...]:
        return ("train", self.model.label, self.defense.label)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the grid; ``attack`` is None for the clean-accuracy cell."""

    attack: AttackConfig | None
    eps: float
    cell_id: str


@dataclasses.dataclass(frozen=True)
class Unit:
    """A model × defense evaluated naively or adaptively, with its cells (clean first).

    ``adaptive`` marks the adaptive evaluation of an inference wrapper: attacks run on its
    differentiable stand-in (BPDA, EOT) and are scored on the wrapper itself. ``trainings``
    are the checkpoints it reads: one, or one per member of a member wrapper (ensemble,
    fusion) in ``members`` order. ``model`` is the table row: a model of the config, or for
    members on several models a row of its own labelled ``"<model>+<model>"``. ``random``
    marks a random model (``defenses.is_random``), scored over ``draws`` independent draws
    (1 for a deterministic model).
    """

    model: ModelConfig
    defense: DefenseConfig
    adaptive: bool
    trainings: tuple[Training, ...]
    cells: tuple[Cell, ...]
    random: bool = False
    draws: int = 1

    @property
    def training(self) -> Training:
        """The one checkpoint of a unit that is not a member wrapper."""
        return self.trainings[0]

    @property
    def checkpoint(self) -> str:
        """The weights digest(s) this unit evaluates (``+``-joined for member wrappers)."""
        return "+".join(t.digest for t in self.trainings)

    @property
    def defense_label(self) -> str:
        return defense_label(self.defense.label, self.adaptive)

    def attack_key_parts(self, attack: AttackConfig) -> tuple[str, ...]:
        return ("attack", self.model.label, self.defense.label, attack.label, attack.norm)

    @property
    def score_key_parts(self) -> tuple[str, ...]:
        """Names of the key a random defense is scored with: one draw per example, shared by
        the clean cell and every attack, naive and adaptive rows alike."""
        return ("score", self.model.label, self.defense.label)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The whole sweep as typed objects, built once by :func:`make_plan`."""

    config: SweepConfig
    data_fingerprint: str
    trainings: tuple[Training, ...]
    units: tuple[Unit, ...]

    @property
    def cells(self) -> tuple[Cell, ...]:
        return tuple(c for u in self.units for c in u.cells)

    def order(self) -> dict:
        """Row and column order of reports, and the cells of the current grid (plan.json)."""
        return {
            "run": self.config.name,
            "models": list(dict.fromkeys([*(m.label for m in self.config.models),
                                          *(u.model.label for u in self.units)])),
            "defenses": list(dict.fromkeys(u.defense_label for u in self.units)),
            "attacks": [[a.label, a.norm] for a in self.config.attacks],
            # the registered name of each row's defense (reports find e.g. poisoned rows by it)
            "defense_names": {u.defense_label: u.defense.name for u in self.units},
            "cells": [c.cell_id for c in self.cells],
        }


def _row_model(d: DefenseConfig) -> ModelConfig:
    """The table row of a wrapper whose members name their models: that model if they share
    one, else a row of its own labelled with their model labels joined by ``+`` (in member
    order; ``bench.sweep.config`` makes sure no [[models]] entry has that label)."""
    distinct = list({m.model.label: m.model for m in d.members}.values())
    if len(distinct) == 1:
        return distinct[0]
    return ModelConfig("+".join(m.name for m in distinct), "+".join(m.label for m in distinct),
                       None, ())


def surrogate_unit(cfg: SweepConfig, label: str) -> tuple[ModelConfig, DefenseConfig]:
    """The (model, defense) of a ``<model label>/<defense label>[ (adaptive)]`` surrogate
    (checked by :mod:`bench.sweep.config`)."""
    for m in cfg.models:
        for d in cfg.defenses:
            if label in (f"{m.label}/{d.label}", f"{m.label}/{defense_label(d.label, True)}"):
                return m, d
    raise KeyError(label)


def make_plan(cfg: SweepConfig, data_fingerprint: str) -> Plan:
    """Every training, unit and cell of ``cfg`` on the data set with ``data_fingerprint``."""
    trainings: dict[tuple[str, str], Training] = {}
    pretrained = DefenseConfig(PRETRAINED, PRETRAINED, None)
    for m in cfg.models:
        if m.weights is not None:  # loads its weights: the file's digest keys its cells
            trainings[m.label, PRETRAINED] = Training(m, pretrained, m.weights.sha256[:12])
            continue
        for d in cfg.defenses:
            if d.members or d.trained.name == PRETRAINED:  # members are training defenses of
                continue  # this grid, trained for themselves; 'pretrained' wraps loaded weights
            t = d.trained
            if (m.label, t.label) not in trainings:
                digest = stable_hash({
                    "data": data_fingerprint, "train_examples": cfg.data.train_examples,
                    "model": model_identity(m), "defense": [t.name, t.defense],
                    "seed": cfg.seed})
                trainings[m.label, t.label] = Training(m, t, digest)

    def units_of(m: ModelConfig, d: DefenseConfig, ts: tuple[Training, ...]) -> list[Unit]:
        """The naive (and adaptive) unit of row ``m`` × ``d`` reading checkpoints ``ts``."""
        out = []
        modes = (False, True) if d.is_wrapper and has_adaptive(d.defense) else (False,)
        random = is_random(d.defense)
        draws = cfg.eval.draws if random else 1
        # A random model gets each attack as run on one (AutoAttack: version "rand").
        attacks = [a.for_random_model() for a in cfg.attacks] if random else list(cfg.attacks)
        for adaptive in modes:
            row = defense_label(d.label, adaptive)
            # The evaluated examples (the data's content digest and how many are evaluated),
            # not how they are read (stream, data_dir) or batched: results do not depend on it.
            data = {"fingerprint": data_fingerprint, "eval_examples": cfg.data.eval_examples}
            if d.members:
                base = {"data": data, "seed": cfg.seed,
                        "model": [model_identity(t.model) for t in ts],
                        "defense": [d.name, d.defense], "weights": [t.digest for t in ts]}
            else:
                base = {"data": data, "seed": cfg.seed, "model": model_identity(m),
                        "defense": [d.name, d.defense], "weights": ts[0].digest}
            if adaptive:
                base["adaptive"] = True
            base.update(random_identity(random, draws))

            def make(attack: AttackConfig | None, eps: float, base=base, row=row) -> Cell:
                ident = {**base, "eps": eps, "attack": None if attack is None
                         else [attack.name, attack.attack]}
                if attack is not None and getattr(attack.attack, "surrogate", ()):
                    ident["surrogates"] = surrogate_identity(attack.attack.surrogate)
                label = CLEAN if attack is None else attack.label
                norm = "none" if attack is None else attack.norm
                return Cell(attack, eps, cell_id(m.label, row, label, norm, eps, ident))

            cells = [make(None, 0.0)] + [make(a, e) for a in attacks for e in a.eps]
            out.append(Unit(m, d, adaptive, ts, tuple(cells), random, draws))
        return out

    def member_trainings(d: DefenseConfig, m: ModelConfig | None) -> tuple[Training, ...]:
        return tuple(trainings[(mem.model or m).label, mem.defense.label] for mem in d.members)

    def surrogate_identity(labels: tuple[str, ...]) -> list:
        """What determines a transfer attack's surrogates (``<model>/<defense>`` labels): their
        defenses and weights digests, so retraining a surrogate gives new cells."""
        out = []
        for label in labels:
            m, d = surrogate_unit(cfg, label)
            ts = member_trainings(d, m) if d.members else (trainings[m.label, d.trained.label],)
            out.append([label, [d.name, d.defense], [t.digest for t in ts]])
        return out

    units, own_rows = [], []
    model_labels = {m.label for m in cfg.models}
    for m in cfg.models:
        if m.weights is not None:  # no training defense applies to weights loaded as they are
            units += units_of(m, pretrained, (trainings[m.label, PRETRAINED],))
            for d in cfg.defenses:  # wrappers with base = "pretrained" wrap them
                if d.base is not None and d.base.name == PRETRAINED:
                    units += units_of(m, d, (trainings[m.label, PRETRAINED],))
            continue
        for d in cfg.defenses:
            if d.trained.name == PRETRAINED:
                continue
            if not d.members:
                units += units_of(m, d, (trainings[m.label, d.trained.label],))
            elif not d.fixed_members or _row_model(d).label == m.label:
                units += units_of(m, d, member_trainings(d, m))
    for d in cfg.defenses:  # members on several models: one row of their own, after the models
        if d.fixed_members and _row_model(d).label not in model_labels:
            own_rows += units_of(_row_model(d), d, member_trainings(d, None))
    return Plan(cfg, data_fingerprint, tuple(trainings.values()), tuple(units + own_rows))
