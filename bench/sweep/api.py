"""The Python API: benchmark any ``logits_fn(params, x)`` in a few lines.

>>> import bench
>>> records = bench.evaluate(logits_fn, params, "digits",
...                          [{"name": "pgd", "norm": "linf", "steps": 20, "eps": [0.0, 0.1]}])
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from attacks import Corruption, Transfer
from attacks.base import Trainable
from bench.errors import ConfigError
from bench.store.provenance import code_version
from bench.store.records import CLEAN, records_frame
from bench.sweep import engine as ev
from bench.sweep.config import (
    AttackConfig,
    DefenseConfig,
    ModelConfig,
    check_eps_range,
    check_severities,
    corruption_attacks,
    parse_eps,
)
from bench.sweep.data import load_dataset
from bench.sweep.plan import Cell, Unit, cell_id, key_for, random_identity
from bench.sweep.registry import ATTACKS
from bench.sweep.unit import Context, Target, direct, evaluate_unit, record_of


def _attack_specs(attacks: Sequence[Any], eps: Sequence[float] | None) -> list[tuple]:
    """(label, attack instance, ε values, options set explicitly, skipped corruptions) from
    dicts in config form (the keys written) or attack instances (the fields that differ from
    their defaults); a ``corruption`` dict gives one attack per kind, as in a sweep."""

    specs = []
    for i, a in enumerate(attacks):
        where = f"attacks[{i}]"
        if isinstance(a, Mapping):
            a = dict(a)
            if "name" not in a:
                raise ConfigError(f"{where} has no name; add \"name\": \"pgd\" (see `robustax list`)")
            name = ATTACKS.canonical(a.pop("name"))
            label = a.pop("label", name)
            values = a.pop("eps", eps)
            if name == "corruption":  # one attack per kind, as in a sweep config
                if values is None:
                    raise ConfigError(f"{where} has no eps; pass eps=[...] or put \"eps\" in "
                                      f"its dict")
                specs += [(c.label, c.attack, c.eps, frozenset(), c.skipped)
                          for c in corruption_attacks(a, where, label, parse_eps(values, where))]
                continue
            attack = ATTACKS.build(name, a, where)
            explicit = frozenset(a)
        else:
            if not dataclasses.is_dataclass(a) or not callable(a) or not hasattr(a, "norm"):
                raise ConfigError(f"{where} = {a!r} is not an attack; pass an attack instance "
                                  f"(e.g. attacks.PGD()) or a dict with a name")
            label, attack, values = ATTACKS.name_of(a), a, eps
            # an instance's options count as set where they differ from their defaults
            defaults = {f.name: f.default for f in dataclasses.fields(a)}
            explicit = frozenset(k for k, _ in getattr(type(a), "random_options", ())
                                 if getattr(a, k) != defaults.get(k))
            if isinstance(a, Corruption):
                label = f"{label}-{a.kind}"
        if values is None:
            raise ConfigError(f"{where} has no eps; pass eps=[...] or put \"eps\" in its dict")
        values = parse_eps(values, where)
        if isinstance(attack, Corruption):
            check_severities(values, where)
        specs.append((label, attack, values, explicit, ()))
    return specs


def _trained(label: str, attack: Any, logits_fn: Callable, params: Any,
             attack_logits_fn: Callable | None, data: Any, data_dir: str | None, seed: int) -> Any:
    """A trainable attack (AdvGAN) fitted on the data set's training split against the model
    (or its stand-in) and bound; other attacks as given. An unresolved ``transfer`` (a config
    name without its crafter) is an error: pass ``attacks.Transfer.of(attack)``."""

    if isinstance(attack, Transfer) and attack._crafter is None:
        raise ConfigError(f"{label}: transfer needs its crafting attack; in Python pass "
                          f"attacks.Transfer.of(attacks.PGD(...)) and the surrogate as "
                          f"attack_logits_fn (a sweep config names both)")
    if not isinstance(attack, Trainable):
        return attack
    if not isinstance(data, str):
        raise ConfigError(f"{label}: {type(attack).__name__} trains on a training split; pass "
                          f"data as a data-set name, or an attack already trained with "
                          f"attack.bind(attack.fit(logits_fn, params, x_train, y_train, key))")

    ds = load_dataset(data, data_dir=data_dir)
    return attack.bind(attack.fit(attack_logits_fn or logits_fn, params, ds.x_train, ds.y_train,
                                  key_for(seed, "generator", label, attack.norm)))


_UNSET = object()


def _module_logits(model: Any, params: Any, data: Any, attacks: Any) -> tuple:
    """(logits_fn, params, data, attacks) from what was passed: a Flax NNX module (which
    carries its parameters: ``evaluate(model, data, attacks)``), a flax.linen module with its
    variables (``evaluate(module, variables, data, attacks)``) or ``logits_fn, params``."""
    import flax.linen as nn

    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax without NNX
        nnx = None
    if nnx is not None and isinstance(model, nnx.Module):
        if attacks is _UNSET:  # evaluate(model, data, attacks): shift the positional arguments
            params, data, attacks = _UNSET, params, data
        if params is not _UNSET:
            raise ConfigError("an NNX module carries its own parameters; call "
                              "bench.evaluate(model, data, attacks, eps=...)")
        # A copy in evaluation mode (BatchNorm running averages, no dropout); the caller's
        # module is left as it is. Its state is the params pytree attacks differentiate.
        graphdef, state = nnx.split(model)
        copy = nnx.merge(graphdef, state)
        copy.eval()
        graphdef, state = nnx.split(copy)

        def nnx_logits(state, x):
            return nnx.merge(graphdef, state)(x)

        return nnx_logits, state, data, attacks
    if isinstance(model, nn.Module):
        import inspect

        if params is _UNSET:
            raise ConfigError("a flax.linen module needs its variables: call "
                              "bench.evaluate(module, variables, data, attacks, eps=...)")
        takes_train = "train" in inspect.signature(type(model).__call__).parameters

        def linen_logits(variables, x):
            return model.apply(variables, x, train=False) if takes_train else \
                model.apply(variables, x)

        return linen_logits, params, data, attacks
    if not callable(model):
        raise ConfigError(f"the model {type(model).__name__} is not a logits_fn, an NNX module or "
                          f"a flax.linen module; pass logits_fn(params, x) and its params")
    if params is _UNSET:
        raise ConfigError("a logits_fn needs its params: call bench.evaluate(logits_fn, params, "
                          "data, attacks, eps=...)")
    return model, params, data, attacks


def evaluate(logits_fn: Callable, params: Any = _UNSET, data: str | tuple = _UNSET,
             attacks: Sequence[Any] = _UNSET, *,
             eps: Sequence[float] | None = None, eval_examples: int | None = None,
             batch_size: int = 500, seed: int = 0, model: str = "model", defense: str = "none",
             data_dir: str | None = None, return_masks: bool = False,
             attack_logits_fn: Callable | None = None, draws: int = 10,
             ) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Robust accuracy of ``logits_fn(params, x)`` under each attack at each ε.

    Three ways to pass the model: ``evaluate(logits_fn, params, data, attacks)``,
    ``evaluate(nnx_module, data, attacks)`` (a ``flax.nnx.Module``, evaluated in eval mode on
    a copy; its state is what attacks differentiate through) and
    ``evaluate(linen_module, variables, data, attacks)`` (called with ``train=False`` when its
    ``__call__`` takes ``train``).

    Args:
      logits_fn: pure ``(params, x) -> logits``; x is float32 NHWC in [0, 1] (normalise
        inside). Or a Flax NNX module, or a flax.linen module.
      params: the pytree ``logits_fn`` takes (for Flax: the variables dict); left out for an
        NNX module.
      data: a data-set name (``digits``, ``mnist5k``, ``tfds:cifar10``, ...: its test split
        is used) or a tuple ``(x, y)`` of arrays.
      attacks: attack instances (``attacks.PGD(steps=20)``) or dicts in config form
        (``{"name": "pgd", "steps": 20, "eps": [...]}``).
      eps: budgets for attacks that do not name their own.
      eval_examples: evaluate on the first n examples only.
      batch_size: examples per compiled call; results do not depend on it.
      seed: PRNG seed of the attacks' randomness.
      model, defense: labels for the records.
      return_masks: also return per-example correctness masks keyed by cell id.
      attack_logits_fn: for a non-differentiable or random defense, the stand-in the attacks
        differentiate (e.g. BPDA); accuracy is still measured on ``logits_fn``.
      draws: a random ``logits_fn`` (``logits_fn.random = True``, called
        ``logits_fn(params, x, key)``) is scored over this many draws per example: correct
        (clean) or robust only if correct in every draw; the records' ``details`` give each
        draw's accuracy. Against a random model AutoAttack runs its ``rand`` version unless
        ``version`` is set (an instance's version counts as set when it is not the default:
        pass ``{"name": "autoattack", "version": "standard", ...}`` to force the standard one).

    Returns:
      The tidy records frame (one row per attack × norm × ε, plus the clean row), with the
      same columns as a sweep's records.csv; with ``return_masks``, also the masks.
    """

    logits_fn, params, data, attacks = _module_logits(logits_fn, params, data, attacks)
    if data is _UNSET or attacks is _UNSET:
        raise ConfigError("bench.evaluate needs data and attacks: evaluate(model, data, attacks, "
                          "eps=...) for an NNX module, evaluate(logits_fn, params, data, attacks, "
                          "eps=...) otherwise")

    if isinstance(data, str):
        ds = load_dataset(data, data_dir=data_dir)  # also "npz:path.npz"
        x, y, data_name = ds.x_test, ds.y_test, data
    else:
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise ConfigError("data must be a data-set name or a tuple (x, y) of arrays")
        x, y = data
        data_name = "arrays"

    for name, value in (("batch_size", batch_size), ("eval_examples", eval_examples)):
        if value is None and name == "eval_examples":
            continue
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} = {value!r} is impossible; it must be an integer ≥ 1")
    if (isinstance(attacks, (str, bytes, Mapping)) or not isinstance(attacks, Sequence)
            or dataclasses.is_dataclass(attacks)):
        raise ConfigError(f"attacks = {attacks!r:.60} is not a list; pass a list such as "
                          f"[attacks.PGD()]")
    if len(attacks) == 0:
        raise ConfigError("attacks = [] is empty; pass at least one attack, e.g. [attacks.PGD()]")
    draws = ev.check_draws(draws)
    x, y = ev.check_arrays(x, y)
    if eval_examples is not None:
        x, y = x[:eval_examples], y[:eval_examples]
    ev.check_model(logits_fn, params, x, y)
    if attack_logits_fn is not None:
        ev.check_model(attack_logits_fn, params, x, y, "attack_logits_fn")
    specs = _attack_specs(attacks, eps)
    for label, attack, values, *_ in specs:
        check_eps_range(values, attack.norm, f"attack {label!r}", x.shape[1:])
    specs = [(label, _trained(label, a, logits_fn, params, attack_logits_fn, data, data_dir, seed),
              values, *rest) for label, a, values, *rest in specs]
    data_id = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()[:12]
    unit = api_unit(model, defense, specs, data_id, seed, ev.is_random(logits_fn), draws)
    ctx = Context("api", data_name, seed, x, y, batch_size, code_version())
    rows, masks = [], {}

    def emit(cell, result):
        rows.append(record_of(ctx, unit, cell, result))
        masks[cell.cell_id] = result.mask

    def prepare(ctx, unit, a, target):  # the adaptive stand-in, when given, is attacked
        run = direct(ctx, unit, a, target)
        return run._replace(attack_fn=attack_logits_fn)

    evaluate_unit(unit, {c.cell_id for c in unit.cells}, Target(params, logits_fn), ctx, emit,
                  prepare)
    frame = records_frame(rows)
    return (frame, masks) if return_masks else frame


def api_unit(model: str, defense: str, specs: list[tuple], data_id: str, seed: int,
             random: bool = False, draws: int = 1) -> Unit:
    """The one-unit plan of a ``bench.evaluate`` call: row ``model`` × ``defense``, its clean
    cell and one cell per attack × ε (``specs``: label, attack, ε values and the options set
    explicitly), with ids from the examples' digest, the seed, the labels, each attack's
    options and numerics version and, for a random model, its draws. A random model gets
    each attack as run on one (:meth:`AttackConfig.for_random_model`)."""
    m = ModelConfig(model, model, None)
    d = DefenseConfig(defense, defense, None)
    draws = draws if random else 1
    base = {"data": data_id, "seed": seed, "model": model, "defense": defense,
            **random_identity(random, draws)}

    def cell(a: AttackConfig | None, e: float) -> Cell:
        ident = {**base, "eps": e, "attack": None if a is None else [a.label, a.attack]}
        return Cell(a, e, cell_id(model, defense, CLEAN if a is None else a.label,
                                  "none" if a is None else a.norm, e, ident))

    configs = [AttackConfig(label, label, attack, values, explicit, skipped=skipped)
               for label, attack, values, explicit, skipped in specs]
    if random:
        configs = [a.for_random_model() for a in configs]
    cells = [cell(None, 0.0)] + [cell(a, e) for a in configs for e in a.eps]
    return Unit(m, d, False, (), tuple(cells), random, draws)
