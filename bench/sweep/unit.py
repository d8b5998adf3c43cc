"""The one unit evaluator: a model × defense's cells computed and turned into records.

A sweep (:mod:`bench.sweep.runner`) and the Python API (:func:`bench.evaluate`) both build
:class:`~bench.sweep.plan.Unit`\\ s and hand them to :func:`evaluate_unit`: the clean cell
first, then each attack's missing ε values in one compiled call
(:func:`bench.sweep.engine.attack_correct`), every result turned into a record by
:func:`record_of`, the one record constructor. What differs between the two callers is
passed in, not branched on: how an attack config becomes something runnable (``prepare``:
the sweep binds trained generators and transfer surrogates) and where finished cells go
(``emit``: the sweep writes them to the run directory, the API collects them).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from attacks.base import Cascade, ModelBlind
from bench.errors import RobustaxError
from bench.store.records import CLEAN, make_record
from bench.sweep import engine as ev
from bench.sweep.config import AttackConfig
from bench.sweep.plan import Cell, Unit, key_for


class Target(NamedTuple):
    """What a unit's cells are computed on: the params, the function accuracy is measured on,
    and the stand-in the attacks differentiate (the adaptive BPDA/EOT form), if any."""

    params: Any
    eval_fn: Callable
    attack_fn: Callable | None = None


class AttackRun(NamedTuple):
    """An attack config made runnable on a unit: the attack, the function and params it is
    scored on, the function it differentiates (None: the scored one), its key and the cell
    details to record (a generator's file, a transfer's surrogates)."""

    attack: Any
    fn: Callable
    params: Any
    attack_fn: Callable | None
    key: Any
    details: dict | None = None


class Result(NamedTuple):
    """One computed cell: per-example correctness, time, the attack's per-example info."""

    mask: np.ndarray
    seconds: float
    compile_seconds: float
    info: dict | None = None
    details: dict | None = None


class _NoProgress:
    def set_postfix_str(self, *_, **__):
        pass

    def update(self, *_):
        pass


@dataclasses.dataclass(frozen=True)
class Context:
    """Everything a unit evaluation needs besides the unit: the examples, batching, seed,
    progress bar and the provenance every record carries."""

    run: str
    data: str
    seed: int
    x: np.ndarray
    y: np.ndarray
    batch_size: int
    version: str
    config_id: str = ""
    progress: Any = _NoProgress()


def direct(ctx: Context, unit: Unit, a: AttackConfig, target: Target) -> AttackRun:
    """The ordinary ``prepare``: the attack as configured, on the unit's own functions, with
    the unit's key for it."""
    return AttackRun(a.attack, target.eval_fn, target.params, target.attack_fn,
                     key_for(ctx.seed, *unit.attack_key_parts(a)),
                     {"skipped": dict(a.skipped)} if a.skipped else None)


def _options(o: Any) -> str:
    if o is None:
        return ""
    if dataclasses.is_dataclass(o):
        o = {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    return json.dumps(o, sort_keys=True, default=str)


def _model_options(unit: Unit) -> Any:
    """The row model's options, or per member model when the row spans several models."""
    models = {t.model.label: t.model for t in unit.trainings}
    if not models:  # bench.evaluate: a user's function, no options of ours
        return None
    if len(models) == 1 and unit.model.label in models:
        return dict(unit.model.options)
    return {label: dict(m.options) for label, m in models.items()}


def record_of(ctx: Context, unit: Unit, cell: Cell, result: Result,
              checkpoint_sha256: str = "") -> dict:
    """The one record constructor (sweeps and ``bench.evaluate``): a row of
    :data:`bench.store.records.COLUMNS` for ``cell`` of ``unit`` and its ``result``."""
    a = cell.attack
    attack = None if a is None else a.attack
    stages = tuple(n for n, _ in attack.stages()) if isinstance(attack, Cascade) else ()
    fields = {
        "run": ctx.run, "data": ctx.data, "model": unit.model.label,
        "defense": unit.defense_label, "attack": CLEAN if a is None else a.label,
        "norm": "none" if a is None else a.norm, "eps": float(cell.eps),
        "seconds": round(result.seconds, 4), "compile_seconds": round(result.compile_seconds, 4),
        "seed": ctx.seed, "cell_id": cell.cell_id, "config_id": ctx.config_id,
        "checkpoint": unit.checkpoint, "code_version": ctx.version,
        "attack_options": _options(attack), "model_options": _options(_model_options(unit)),
        "defense_options": _options(unit.defense.defense),
        "checkpoint_sha256": checkpoint_sha256,
    }
    details = result.details
    if a is not None and a.preset:  # options set because the model is random: say so
        details = {**(details or {}), "random_model_options": dict(a.preset)}
    return make_record(fields, result.mask, result.info, stages, details)


def evaluate_unit(unit: Unit, todo: set[str], target: Target, ctx: Context,
                  emit: Callable[[Cell, Result], None],
                  prepare: Callable[[Context, Unit, AttackConfig, Target], AttackRun] = direct,
                  ) -> None:
    """Computes the cells of ``unit`` whose ids are in ``todo`` and passes each, with its
    result, to ``emit``: the clean cell, then per attack all its missing ε values in one
    compiled call. A random model (``unit.random``) is scored over ``unit.draws`` draws per
    example shared by the clean cell and every attack (from the unit's score key), so ε = 0
    reproduces clean accuracy; an example counts only if it is correct in every draw."""
    tag = f"{unit.model.label}/{unit.defense_label}"
    if unit.random != ev.is_random(target.eval_fn):  # the plan's identity must say what runs
        plan, fn = (("random", "deterministic") if unit.random else ("deterministic", "random"))
        raise RobustaxError(f"{tag}: the plan takes it for a {plan} model but its logits "
                            f"function is {fn}; a random defense must declare random = True on "
                            f"its class (and only a random one)")
    score_key = key_for(ctx.seed, *unit.score_key_parts)
    attacks = list(dict.fromkeys(c.attack for c in unit.cells if c.attack is not None))
    missing = {a: [c for c in unit.cells if c.attack is a and c.cell_id in todo]
               for a in attacks}
    clean = None  # this unit's clean correctness (per draw), computed once for all its cells
    clean_cells = [c for c in unit.cells if c.attack is None and c.cell_id in todo]
    # Needed by the clean cell and by every attack cell ANDed with it (not a corruption's).
    if clean_cells or any(missing[a] and not isinstance(a.attack, ModelBlind) for a in attacks):
        ctx.progress.set_postfix_str(f"{tag} clean", refresh=False)
        t0 = time.perf_counter()
        mask, info = ev.clean_correct(target.eval_fn, target.params, ctx.x, ctx.y,
                                      ctx.batch_size, key=score_key, draws=unit.draws,
                                      with_info=True)
        seconds = time.perf_counter() - t0
        clean = info.get("draw_correct", mask)
        for cell in clean_cells:
            emit(cell, Result(mask, seconds, 0.0, info or None))
    for a in attacks:
        if not missing[a]:
            continue
        ctx.progress.set_postfix_str(f"{tag} {a.label} {a.norm}", refresh=False)
        r = prepare(ctx, unit, a, target)
        # The clean pass is shared when the attack is scored on the unit's own model (not
        # for a transfer, whose scoring function carries its surrogates' params too).
        own = r.fn is target.eval_fn and r.params is target.params
        masks, seconds, compile_s, info = ev.attack_correct(
            r.attack, r.fn, r.params, ctx.x, ctx.y, [c.eps for c in missing[a]], r.key,
            ctx.batch_size, attack_logits_fn=r.attack_fn, with_info=True, score_key=score_key,
            draws=unit.draws, clean=clean if own else None)
        for i, (c, mask) in enumerate(zip(missing[a], masks)):
            emit(c, Result(mask, seconds / len(missing[a]), compile_s / len(missing[a]),
                           {k: v[i] for k, v in info.items()}, r.details))
