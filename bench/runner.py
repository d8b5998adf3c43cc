"""The sweep runner: config -> trained checkpoints -> one record per cell.

Training runs once per (model, defense) and is cached as a safetensors checkpoint keyed
by a hash of everything that determines it; every (attack, ε) of a model × defense is one
cell with a record and a per-example mask, written atomically. Re-running a sweep into the
same directory skips finished cells, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import pandas as pd

from bench import engine as ev
from bench.config import SweepConfig
from bench.data import Dataset, load_dataset
from bench.errors import ConfigError, RobustaxError
from bench.plan import (CLEAN, Plan, Training, Unit, has_adaptive, key_for, make_plan, slug,
                        stable_hash, train_version)
from bench.records import (RunDir, atomic_write_bytes, atomic_write_json, atomic_write_text,
                           make_record)
from defenses import checkpoint_bytes, variables_from_bytes
from models import init_variables, make_logits_fn


def code_version() -> str:
    """The robustax version, plus the git commit when run from a checkout."""
    try:
        version = metadata.version("robustax")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        if not top or Path(top).resolve() != root:  # installed inside someone else's repo
            return version
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "attacks", "models", "defenses", "bench"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    if commit:
        version += f"+g{commit}" + (".dirty" if dirty else "")
    return version


def environment() -> dict:
    """Versions, devices and flags: what anyone needs to tell how a number was produced."""
    pkgs = {}
    for name in ("robustax", "jax", "jaxlib", "flax", "optax", "numpy", "pandas",
                 "tensorflow-datasets", "safetensors", "scikit-learn", "mlxtend"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": pkgs,
        "code_version": code_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def _prepare_run_dir(run: RunDir, cfg: SweepConfig, config_text: str | None) -> None:
    """Writes the config as run and appends this invocation's environment.

    A changed config may reuse a run directory: cells are keyed by everything that
    determines them, so added cells are computed, unchanged ones are reused, and the
    records and report cover the current grid only. Earlier configs stay in ``history``.
    """
    run.root.mkdir(parents=True, exist_ok=True)
    as_run = run.root / "config.json"
    source = json.loads(json.dumps(cfg.source, default=str))
    state = json.loads(as_run.read_text()) if as_run.is_file() else {}
    if state.get("config") != source:
        history = state.get("history", [])
        if "config" in state:
            history.append({"config": state["config"], "config_id": state.get("config_id")})
        atomic_write_json(as_run, {"config": source, "config_id": cfg.config_id(),
                                   "history": history})
    if config_text is not None:
        atomic_write_text(run.root / "config.toml", config_text)
    env_path = run.root / "environment.json"
    envs = json.loads(env_path.read_text()) if env_path.is_file() else []
    envs.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **environment()})
    atomic_write_json(env_path, envs)


class _Weights:
    """Trained variables per :class:`Training`: loaded from the run directory's checkpoint,
    else trained and saved (one module per model, so compiled attacks are reused)."""

    def __init__(self, run: RunDir, plan: Plan, data: Dataset, bar):
        self.run, self.plan, self.data, self.bar = run, plan, data, bar
        self._modules: dict[str, tuple] = {}
        self._params: dict[Training, Any] = {}

    def module(self, model) -> tuple[Any, Any]:
        """(flax module with the data's classes and statistics, its logits_fn), built once."""
        if model.label not in self._modules:
            d = self.data
            module = model.module.clone(num_classes=d.num_classes, mean=tuple(d.mean),
                                        std=tuple(d.std))
            self._modules[model.label] = (module, make_logits_fn(module))
        return self._modules[model.label]

    def exists(self, t: Training) -> bool:
        return self.run.checkpoint_path(t.file_name).is_file()

    def __call__(self, t: Training) -> Any:
        if t in self._params:
            return self._params[t]
        module, _ = self.module(t.model)
        like = init_variables(module, jax.random.key(0), self.data.image_shape)
        path = self.run.checkpoint_path(t.file_name)
        if path.is_file():
            try:
                params, _ = variables_from_bytes(path.read_bytes(), like=like)
            except ValueError as e:
                raise RobustaxError(f"checkpoint {path} is damaged: {e}; delete it to "
                                    f"retrain") from None
        else:
            params = self._train(t, module)
        self._params[t] = params
        return params

    def _train(self, t: Training, module) -> Any:
        m, d, bar = t.model, t.defense, self.bar
        bar.set_postfix_str(f"training {m.label}/{d.label}", refresh=False)
        t0 = time.perf_counter()
        try:
            params = d.defense.train(
                module, self.data, key_for(self.plan.config.seed, *t.key_parts),
                on_epoch=lambda e, loss: bar.set_postfix_str(
                    f"training {m.label}/{d.label} epoch {e + 1}/{d.defense.epochs} "
                    f"loss {loss:.3f}", refresh=False))
        except ValueError as e:
            raise ConfigError(f"training {m.label} with {d.label}: {e}") from None
        meta = {"model": m.name, "model_options": dict(m.options), "defense": d.name,
                "data": self.data.name, "train_seconds": time.perf_counter() - t0}
        self.run.write_checkpoint(t.file_name, checkpoint_bytes(params, meta))
        bar.update(1)
        return params


def _unit_functions(unit: Unit, weights: _Weights, wrapped: dict) -> tuple:
    """(params, the function accuracy is measured on, the adaptive stand-in or None) of a
    unit. Member wrappers get the tuple of their members' params and logits functions; the
    wrapped functions are built once per row and defense, so compiled programs are reused."""
    d = unit.defense
    fns = tuple(weights.module(t.model)[1] for t in unit.trainings)
    params = tuple(weights(t) for t in unit.trainings)
    if not d.members:
        fns, params = fns[0], params[0]
    if not d.is_wrapper:
        return params, fns, None
    if (unit.model.label, d.label) not in wrapped:  # stable function objects keep compiles cached
        wrapped[unit.model.label, d.label] = (
            d.defense.wrap(fns), d.defense.adaptive(fns) if has_adaptive(d.defense) else None)
    eval_fn, adaptive_fn = wrapped[unit.model.label, d.label]
    return params, eval_fn, adaptive_fn


def _model_options(unit: Unit) -> dict:
    """The row model's options, or per member model when the row spans several models."""
    models = {t.model.label: t.model for t in unit.trainings}
    if len(models) == 1 and unit.model.label in models:
        return dict(unit.model.options)
    return {label: dict(m.options) for label, m in models.items()}


def _evaluate_unit(unit: Unit, todo: set[str], weights: _Weights, plan: Plan, x, y,
                   version: str, run: RunDir, bar, wrapped: dict) -> None:
    """Computes and writes the unfinished cells of one model × defense (× adaptive)."""
    cfg = plan.config
    m, d = unit.model, unit.defense
    params, eval_fn, adaptive_fn = _unit_functions(unit, weights, wrapped)
    attack_fn = adaptive_fn if unit.adaptive else None
    score_key = key_for(cfg.seed, *unit.score_key_parts)
    tag = f"{m.label}/{unit.defense_label}"

    def write(cell, mask, seconds, compile_s, info=None, details=None):
        a = cell.attack
        run.write_cell(make_record(
            run=cfg.name, data=cfg.data.name, model=m.label, defense=unit.defense_label,
            attack=CLEAN if a is None else a.label, norm="none" if a is None else a.norm,
            eps=cell.eps, mask=mask, seconds=seconds, compile_seconds=compile_s, seed=cfg.seed,
            cell_id=cell.cell_id, config_id=cfg.config_id(), checkpoint=unit.checkpoint,
            code_version=version, attack_options=None if a is None else a.attack,
            model_options=_model_options(unit), defense_options=d.defense, info=info,
            details=details), mask)
        bar.update(1)

    for cell in unit.cells:
        if cell.attack is None and cell.cell_id in todo:
            bar.set_postfix_str(f"{tag} clean", refresh=False)
            t0 = time.perf_counter()
            mask = ev.clean_correct(eval_fn, params, x, y, cfg.eval.batch_size, key=score_key)
            write(cell, mask, time.perf_counter() - t0, 0.0)
    for a in cfg.attacks:
        missing = [c for c in unit.cells if c.attack is a and c.cell_id in todo]
        if not missing:
            continue
        bar.set_postfix_str(f"{tag} {a.label} {a.norm}", refresh=False)
        attack, run_fn, run_params, run_attack_fn, key, details = _attack_setup(
            a, unit, params, eval_fn, attack_fn, plan, weights, run, bar, wrapped)
        masks, seconds, compile_s, info = ev.attack_correct(
            attack, run_fn, run_params, x, y, [c.eps for c in missing], key,
            cfg.eval.batch_size, attack_logits_fn=run_attack_fn, with_info=True,
            score_key=score_key)
        for i, (c, mask) in enumerate(zip(missing, masks)):
            write(c, mask, seconds / len(missing), compile_s / len(missing),
                  {k: v[i] for k, v in info.items()}, details)


# ---- trained attacks (AdvGAN) and transfer attacks ------------------------------------------


def _unit_ident(unit: Unit) -> dict:
    """What determines the function a unit's attacks run on (for generator cache keys)."""
    return {"unit": f"{unit.model.label}/{unit.defense_label}", "weights": unit.checkpoint,
            "defense": [unit.defense.name, unit.defense.defense]}


def generator_file(a, recipe, ident: dict, tag: str, plan: Plan) -> str:
    """The cache file name of a trainable attack's generator: ``<target>.<attack>-<norm>.<digest>``
    with a digest of the target (``ident``), the attack's options, the data, the seed and the
    attack's source (:func:`bench.plan.train_version`)."""
    cfg = plan.config
    digest = stable_hash({**ident, "attack": [a.name, recipe], "data": plan.data_fingerprint,
                          "train_examples": cfg.data.train_examples, "seed": cfg.seed,
                          "version": train_version(type(recipe))})
    return f"{slug(tag, 60)}.{slug(a.label)}-{a.norm}.{digest}.safetensors"


def _generator(a, recipe, ident: dict, tag: str, fn, params, plan: Plan, weights: _Weights,
               run: RunDir, bar) -> tuple[Any, dict]:
    """``recipe`` (a trainable attack, e.g. AdvGAN) bound to its generator trained against
    ``fn(params, ·)`` on the training split, and the cell details: the generator's file and
    training seconds (kept apart from the attack's time). The generator is cached in
    ``generators/`` under a digest of the target (``ident``: weights digest(s), defense), the
    attack options, data, seed and the attack's source, so it is reused by every cell and
    rerun that needs it and retrained when any of those changes."""
    cfg, data = plan.config, weights.data
    name = generator_file(a, recipe, ident, tag, plan)
    path = run.root / "generators" / name
    like = recipe.init(jax.random.key(0), data.x_train[:1])
    if path.is_file():
        try:
            variables, meta = variables_from_bytes(path.read_bytes(), like=like)
        except ValueError as e:
            raise RobustaxError(f"generator {path} is damaged: {e}; delete it to retrain") from None
        return recipe.bind(variables), {"generator": name, "generator_cached": True,
                                        "generator_train_seconds": meta.get("train_seconds")}
    bar.set_postfix_str(f"training the {a.label} generator against {tag}", refresh=False)
    t0 = time.perf_counter()
    try:
        variables = recipe.fit(
            fn, params, data.x_train, data.y_train,
            key_for(cfg.seed, "generator", tag, a.label, a.norm),
            on_epoch=lambda e, loss: bar.set_postfix_str(
                f"{a.label} generator vs {tag} epoch {e + 1}/{recipe.epochs} loss {loss:.3f}",
                refresh=False))
    except ValueError as e:
        raise ConfigError(f"training the {a.label} generator against {tag}: {e}") from None
    seconds = time.perf_counter() - t0
    atomic_write_bytes(path, checkpoint_bytes(variables, {"train_seconds": seconds,
                                                          "against": tag, "attack": a.label}))
    return recipe.bind(variables), {"generator": name, "generator_cached": False,
                                    "generator_train_seconds": seconds}


@functools.lru_cache(maxsize=64)
def _pick(fn, i: int):
    """``fn`` as a function of a params tuple, reading ``params[i]`` (keeps ``random``): a
    transfer cell is scored on the target (params[0]) and crafted on the surrogate (params[1])
    through the engine's ordinary ``attack_logits_fn`` path."""
    if getattr(fn, "random", False):
        def picked(params, x, key):
            return fn(params[i], x, key)

        picked.random = True
        return picked

    def picked(params, x):  # noqa: F811
        return fn(params[i], x)

    return picked


def _attack_setup(a, unit: Unit, params, eval_fn, attack_fn, plan: Plan, weights: _Weights,
                  run: RunDir, bar, wrapped: dict):
    """(attack, scored function, params, attacked function, key, record details) of attack
    config ``a`` on ``unit``: the attack itself; a trainable attack bound to its generator;
    or, for ``transfer``, the crafting attack run on the surrogate(s) and scored on the unit.
    A single surrogate crafts with the key of its own white-box cell of that attack, so a
    model transferring to itself reproduces its white-box cell."""
    from attacks import Transfer
    from attacks.transfer import mean_logits

    cfg = plan.config
    key = key_for(cfg.seed, *unit.attack_key_parts(a))
    tag = f"{unit.model.label}/{unit.defense_label}"
    if not isinstance(a.attack, Transfer):
        attack, details = a.attack, None
        if getattr(attack, "trainable", False):
            attack, details = _generator(a, attack, _unit_ident(unit), tag, attack_fn or eval_fn,
                                         params, plan, weights, run, bar)
        return attack, eval_fn, params, attack_fn, key, details
    t = a.attack
    crafter = next(c for c in cfg.attacks if c.attack is t.crafter)
    sunits = [next(u for u in plan.units if f"{u.model.label}/{u.defense_label}" == s)
              for s in t.surrogate]
    fns, sparams = [], []
    for su in sunits:
        p, e, ad = _unit_functions(su, weights, wrapped)
        fns.append(ad if su.adaptive else e)
        sparams.append(p)
    if len(sunits) == 1:
        sfn, sp = fns[0], sparams[0]
        key = key_for(cfg.seed, *sunits[0].attack_key_parts(crafter))
    else:
        if ("surrogates", t.surrogate) not in wrapped:  # one function object: compiles reused
            wrapped["surrogates", t.surrogate] = mean_logits(fns)
        sfn, sp = wrapped["surrogates", t.surrogate], tuple(sparams)
        key = key_for(cfg.seed, "attack", "+".join(t.surrogate), crafter.label, crafter.norm)
    attack, details = crafter.attack, {"surrogate": list(t.surrogate), "crafter": crafter.label}
    if getattr(attack, "trainable", False):
        ident = _unit_ident(sunits[0]) if len(sunits) == 1 else {
            "units": [_unit_ident(u) for u in sunits]}
        attack, more = _generator(crafter, attack, ident, "+".join(t.surrogate), sfn, sp, plan,
                                  weights, run, bar)
        details.update(more)
    return attack, _pick(eval_fn, 0), (params, sp), _pick(sfn, 1), key, details


def run_sweep(cfg: SweepConfig, out_dir: str | Path, *, config_text: str | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Runs (or resumes) a sweep into ``out_dir`` and returns the records frame.

    Writes config.json/config.toml, environment.json, plan.json, checkpoints/, cells/,
    masks/ and records.csv; tables and plots come from :func:`bench.report.write_report`.
    """
    from tqdm.auto import tqdm

    run = RunDir(Path(out_dir))
    _prepare_run_dir(run, cfg, config_text)
    data = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir,
                        train_examples=cfg.data.train_examples)
    plan = make_plan(cfg, data.fingerprint())
    run.write_plan(plan.order())
    n_eval = len(data.x_test) if cfg.data.eval_examples is None else min(
        cfg.data.eval_examples, len(data.x_test))
    x_eval, y_eval = data.x_test[:n_eval], data.y_test[:n_eval]
    version = code_version()

    todo = {c.cell_id for c in plan.cells if not run.has_cell(c.cell_id)}
    units = [u for u in plan.units if any(c.cell_id in todo for c in u.cells)]
    bar = tqdm(total=0, desc=cfg.name, unit="cell", disable=not progress, dynamic_ncols=True)
    weights = _Weights(run, plan, data, bar)
    n_train = len({t for u in units for t in u.trainings if not weights.exists(t)})
    bar.total = len(todo) + n_train
    bar.refresh()
    wrapped: dict = {}
    for unit in units:
        _evaluate_unit(unit, todo, weights, plan, x_eval, y_eval, version, run, bar, wrapped)
    bar.close()
    records = run.read_records(only={c.cell_id for c in plan.cells})
    atomic_write_text(run.records_csv, records.to_csv(index=False))
    return records
