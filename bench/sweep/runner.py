"""The sweep runner: config -> trained checkpoints -> one record per cell.

Training runs once per (model, defense) and is cached as a safetensors checkpoint keyed
by a hash of everything that determines it; every (attack, ε) of a model × defense is one
cell with a record and a per-example mask, written atomically. Re-running a sweep into the
same directory skips finished cells, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import pandas as pd

from attacks import Transfer
from attacks.base import Trainable
from attacks.transfer import mean_logits
from bench.errors import ConfigError, RobustaxError, printable, warn
from bench.security.artifacts import Artifacts, checkpoint_files
from bench.security.ledger import Ledger
from bench.store.io import slug
from bench.store.provenance import code_version, environment
from bench.store.records import MISSING, RunDir, check_run_directory, run_lock
from bench.sweep import engine as ev
from bench.sweep.config import SweepConfig, check_eps_range
from bench.sweep.data import Dataset, load_dataset
from bench.sweep.plan import (
    Plan,
    Training,
    Unit,
    has_adaptive,
    key_for,
    make_plan,
    stable_hash,
)
from bench.sweep.unit import (
    AttackRun,
    Context,
    Target,
    direct,
    evaluate_unit,
    record_of,
)
from bench.sweep.weights import load as load_weights
from bench.sweep.weights import shapes as weight_shapes
from defenses import checkpoint_bytes, variables_from_bytes
from models import init_variables, make_logits_fn


def _read_json_state(run: RunDir, name: str, default: Any, kind: type) -> Any:
    """A JSON file robustax keeps across invocations (config.json, environment.json), or
    ``default`` when it is absent; a corrupt one is set aside as ``<name>.corrupt`` with a
    warning (it holds history, not numbers), so it never wedges a run."""
    path = run.root / name
    if not path.is_file():
        return default
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(value, kind):
            raise ValueError
        return value
    except (ValueError, UnicodeDecodeError):
        run.set_aside(path)
        warn(f"{path} was corrupt; kept it as {path.name}.corrupt and started a new one")
        return default


def _prepare_run_dir(run: RunDir, cfg: SweepConfig, config_text: str | None) -> None:
    """Writes the config as run and appends this invocation's environment.

    A changed config may reuse a run directory: cells are keyed by everything that
    determines them, so added cells are computed, unchanged ones are reused, and the
    records and report cover the current grid only. Earlier configs stay in ``history``.
    """
    as_run = run.root / "config.json"
    source = json.loads(json.dumps(cfg.source, default=str))
    state = _read_json_state(run, "config.json", {}, dict)
    if state.get("config") != source:
        history = state.get("history", [])
        if "config" in state:
            history.append({"config": state["config"], "config_id": state.get("config_id")})
        run.store_json(as_run, {"config": source, "config_id": cfg.config_id(),
                                "history": history})
    if config_text is not None:
        run.store_text(run.root / "config.toml", config_text)
    envs = _read_json_state(run, "environment.json", [], list)
    envs.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **environment()})
    run.store_json(run.root / "environment.json", envs)


class _Weights:
    """Trained variables per :class:`Training`: loaded from the run directory's checkpoint,
    else trained and saved (one module per model, so compiled attacks are reused)."""

    def __init__(self, run: RunDir, plan: Plan, data: Dataset, bar, arts=None, ledger=None):
        self.run, self.plan, self.data, self.bar = run, plan, data, bar
        self.arts = Artifacts.from_config(plan.config.security) if arts is None else arts
        self.ledger = ledger
        self._modules: dict[str, tuple] = {}
        self._params: dict[Training, Any] = {}
        self.sha256: dict[Training, str] = {}  # digest of each checkpoint file loaded or written

    def module(self, model) -> tuple[Any, Any]:
        """(flax module with the data's classes and statistics, its logits_fn), built once."""
        if model.label not in self._modules:
            d, w = self.data, model.weights
            stats = {"num_classes": d.num_classes, "mean": tuple(d.mean), "std": tuple(d.std)}
            if w is not None:  # weights bring their own normalisation
                stats.update(mean=w.mean, std=w.std)
                channels = d.image_shape[-1]
                for k in ("mean", "std"):
                    if stats[k] is not None and len(stats[k]) not in (1, channels):
                        raise ConfigError(f"model {model.label}: {k} = {list(stats[k])} has "
                                          f"{len(stats[k])} values, the images of "
                                          f"{d.name!r} have {channels} channel(s); give one "
                                          f"value per channel")
            fields = {f.name for f in dataclasses.fields(model.module)}  # a user's module may
            module = model.module.clone(**{k: v for k, v in stats.items()  # lack some of them
                                           if k in fields})
            self._modules[model.label] = (module, make_logits_fn(module))
        return self._modules[model.label]

    def exists(self, t: Training) -> bool:
        return t.model.weights is not None or \
            self.arts.find(self.run.checkpoints, t.file_name) is not None

    def stored_digest(self, t: Training) -> str | None:
        """The sha256 of the stored checkpoint (plain or ``.enc``) in the manifest, or of the
        weights file a model entry loads; None when there is none yet."""
        if t.model.weights is not None:
            return t.model.weights.sha256
        path = self.arts.find(self.run.checkpoints, t.file_name)
        return None if path is None else self.run.manifest.digest(path)

    def __call__(self, t: Training) -> Any:
        if t in self._params:
            return self._params[t]
        module, _ = self.module(t.model)
        if t.model.weights is not None:
            w = t.model.weights
            params = load_weights(w.resolved, weight_shapes(module, self.data.image_shape),
                                  repr(t.model.label), expected_digest=w.sha256)
            self.sha256[t] = w.sha256
            self._params[t] = params
            return params
        like = init_variables(module, jax.random.key(0), self.data.image_shape)
        path = self.arts.find(self.run.checkpoints, t.file_name)
        if path is not None:
            data = path.read_bytes()
            try:  # verified against [security] trust and decrypted in memory when asked for
                params, _ = variables_from_bytes(self.arts.load_checkpoint(path, data),
                                                 like=like)
            except ValueError as e:
                raise RobustaxError(f"checkpoint {path} is damaged: {e}; delete it to "
                                    f"retrain") from None
            self.sha256[t] = self.run.verify_checkpoint(path.name, data)
        else:
            params = self._train(t, module)
        self._params[t] = params
        return params

    def _train(self, t: Training, module) -> Any:
        m, d, bar = t.model, t.defense, self.bar
        if len(self.data.x_train) == 0:
            raise ConfigError(f"data set {self.data.name!r} has no training split, so "
                              f"{m.label}/{d.label} cannot be trained; add x_train and y_train "
                              f"to the .npz or give the model weights = \"...\"")
        bar.set_postfix_str(f"training {m.label}/{d.label}", refresh=False)
        try:
            params = d.defense.train(
                module, self.data, key_for(self.plan.config.seed, *t.key_parts),
                on_epoch=lambda e, loss: bar.set_postfix_str(
                    f"training {m.label}/{d.label} epoch {e + 1}/{d.defense.epochs} "
                    f"loss {loss:.3f}", refresh=False))
        except ValueError as e:
            raise ConfigError(f"training {m.label} with {d.label}: {e}") from None
        # No timings in the file: the same seed gives the same bytes, hence the same digest.
        meta = {"model": m.name, "model_options": dict(m.options), "defense": d.name,
                "data": self.data.name}
        self.sha256[t] = self.arts.save_checkpoint(
            self.run, t.file_name, checkpoint_bytes(params, meta),
            ids={"model": m.label, "defense": d.label, "data": self.data.name,
                 "config_id": self.plan.config.config_id(), "checkpoint": t.digest},
            code_version=code_version(), ledger=self.ledger)
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


def _evaluate_unit(unit: Unit, todo: set[str], weights: _Weights, plan: Plan, run: RunDir,
                   ctx: Context, wrapped: dict) -> None:
    """Computes and writes the unfinished cells of one model × defense (× adaptive) through
    the one unit evaluator, and the row's clean-gradient record for the checklist."""
    params, eval_fn, adaptive_fn = _unit_functions(unit, weights, wrapped)
    target = Target(params, eval_fn, adaptive_fn if unit.adaptive else None)
    sha = "+".join(weights.sha256[t] for t in unit.trainings)

    def emit(cell, result):
        if result.info:
            run.write_info(cell.cell_id, result.info)
        run.write_cell(record_of(ctx, unit, cell, result, sha), result.mask)
        ctx.progress.update(1)

    def prepare(ctx, unit, a, target):
        return _attack_setup(ctx, unit, a, target, plan, weights, run, wrapped)

    evaluate_unit(unit, todo, target, ctx, emit, prepare)
    clean_id = unit.cells[0].cell_id
    if run.read_gradient(clean_id) is None:  # for the checklist: do gradients vanish?
        counts = ev.zero_gradients(target.attack_fn or eval_fn, params, ctx.x, ctx.y,
                                   ctx.batch_size, key=key_for(ctx.seed, *unit.score_key_parts))
        run.store_json(run.gradient_path(clean_id), {
            "loss": "ce", "function": "adaptive stand-in" if target.attack_fn else "model",
            **counts})


# ---- trained attacks (AdvGAN) and transfer attacks ------------------------------------------


def _unit_ident(unit: Unit) -> dict:
    """What determines the function a unit's attacks run on (for generator cache keys)."""
    return {"unit": f"{unit.model.label}/{unit.defense_label}", "weights": unit.checkpoint,
            "defense": [unit.defense.name, unit.defense.defense]}


def generator_file(a, recipe, ident: dict, tag: str, plan: Plan) -> str:
    """The cache file name of a trainable attack's generator: ``<target>.<attack>-<norm>.<digest>``
    with a digest of the target (``ident``), the attack's options, the data, the seed and the
    attack's numerics version (in its options' hash)."""
    cfg = plan.config
    digest = stable_hash({**ident, "attack": [a.name, recipe], "data": plan.data_fingerprint,
                          "train_examples": cfg.data.train_examples, "seed": cfg.seed})
    return f"{slug(tag, 60)}.{slug(a.label)}-{a.norm}.{digest}.safetensors"


def _generator(a, recipe, ident: dict, tag: str, fn, params, plan: Plan, weights: _Weights,
               run: RunDir, bar) -> tuple[Any, dict]:
    """``recipe`` (a trainable attack, e.g. AdvGAN) bound to its generator trained against
    ``fn(params, ·)`` on the training split, and the cell details: the generator's file and
    training seconds (kept apart from the attack's time). The generator is cached in
    ``generators/`` under a digest of the target (``ident``: weights digest(s), defense), the
    attack options and numerics version, data and seed, so it is reused by every cell and
    rerun that needs it and retrained when any of those changes."""
    cfg, data = plan.config, weights.data
    name = generator_file(a, recipe, ident, tag, plan)
    path = run.root / "generators" / name
    like = recipe.init(jax.random.key(0), data.x_train[:1])
    if path.is_file():
        data_bytes = path.read_bytes()
        problem = run.manifest.problem(path, data_bytes)
        if problem is not None:  # like a damaged checkpoint: set aside and train again
            warn(f"generator {path.name}: {problem}; set aside as "
                 f"{run.set_aside(path).name}, training it again")
        else:
            try:
                variables, meta = variables_from_bytes(data_bytes, like=like)
            except ValueError as e:
                raise RobustaxError(f"generator {path} is damaged: {e}; delete it to "
                                    f"retrain") from None
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
    run.store(path, checkpoint_bytes(variables, {"train_seconds": seconds, "against": tag,
                                                 "attack": a.label}))
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


def _attack_setup(ctx: Context, unit: Unit, a, target: Target, plan: Plan, weights: _Weights,
                  run: RunDir, wrapped: dict) -> AttackRun:
    """Attack config ``a`` made runnable on ``unit``: the attack itself (:func:`direct`); a
    trainable attack bound to its generator; or, for ``transfer``, the crafting attack run on
    the surrogate(s) and scored on the unit. A single surrogate crafts with the key of its own
    white-box cell of that attack, so a model transferring to itself reproduces its white-box
    cell."""
    cfg, bar = plan.config, ctx.progress
    params, eval_fn, attack_fn = target
    if not isinstance(a.attack, Transfer):
        r = direct(ctx, unit, a, target)
        if not isinstance(r.attack, Trainable):
            return r
        tag = f"{unit.model.label}/{unit.defense_label}"
        attack, details = _generator(a, r.attack, _unit_ident(unit), tag, attack_fn or eval_fn,
                                     params, plan, weights, run, bar)
        return r._replace(attack=attack, details=details)
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
    if isinstance(attack, Trainable):
        ident = _unit_ident(sunits[0]) if len(sunits) == 1 else {
            "units": [_unit_ident(u) for u in sunits]}
        attack, more = _generator(crafter, attack, ident, "+".join(t.surrogate), sfn, sp, plan,
                                  weights, run, bar)
        details.update(more)
    return AttackRun(attack, _pick(eval_fn, 0), (params, sp), _pick(sfn, 1), key, details)


def _ledger_existing(run: RunDir, plan: Plan, arts, ledger) -> None:
    """Records in the ledger what a run directory already holds from runs before it (or from a
    killed run): checkpoints and finished cells not yet in it as they are."""

    known = ledger.latest()
    for p in checkpoint_files(run.root):
        if ("checkpoint", p.name) not in known:
            ledger.add_checkpoint(p, arts.parameters_digest(p), arts.signer)
    # Cells the ledger does not have yet (a killed run's): those that pass every check. A cell
    # it has is never recorded again from disk: one that differs fails run.cell_problem and is
    # recomputed, so nothing edited after the ledger recorded it gets signed.
    ledger.add_cells(sorted(p.stem for p in run.cells.glob("*.json")
                            if ("cell", p.stem) not in known
                            and run.cell_problem(p.stem)[0] is None), arts.signer)


def run_sweep(cfg: SweepConfig, out_dir: str | Path, *, config_text: str | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Runs (or resumes) a sweep into ``out_dir`` and returns the records frame.

    Writes config.json/config.toml, environment.json, plan.json, checkpoints/, cells/,
    masks/ and records.csv; tables and plots come from :func:`bench.reports.report.write_report`.
    """
    arts = Artifacts.from_config(cfg.security)  # a bad key stops the run before anything is written
    lead = jax.process_index() == 0  # several processes: only process 0 writes the run dir
    if not lead and arts.key is not None:
        raise ConfigError("[security] encryption_key with several processes is not supported "
                          "(each process would encrypt with its own nonce); run it in one "
                          "process or leave encryption out")
    run = RunDir(Path(out_dir)) if lead else _ReadOnlyRun(Path(out_dir))
    if lead:
        check_run_directory(run.root)  # someone's own files: refused before the lock file
    with run_lock(run.root, "run") if lead else contextlib.nullcontext():
        ledger = Ledger(run.root) if lead else _NoLedger()
        # Keys and trust before anything is written: the ledger must be one this run can
        # extend and sign (intact, no lines after its head, signed by this run's key).
        ledger.check_appendable(arts.signer)
        data = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir,
                            train_examples=cfg.data.train_examples, base_dir=cfg.base_dir,
                            stream=cfg.data.stream)

        for a in cfg.attacks:  # L2/L1 budgets need the image size
            check_eps_range(a.eps, a.norm, f"attack {a.label!r}", tuple(data.image_shape))
        plan = make_plan(cfg, data.fingerprint())
        for t in dict.fromkeys(t for u in plan.units for t in u.trainings):
            path = arts.find(run.checkpoints, t.file_name)
            if path is not None and t.model.weights is None:
                arts.check_trusted(path)  # and its checkpoints signed by a trusted key
        if lead:
            run.adopt()
            _prepare_run_dir(run, cfg, config_text)
        _sync("robustax-sweep-prepared")  # the others read what process 0 prepared
        run.write_plan(plan.order())
        n_eval = len(data.x_test) if cfg.data.eval_examples is None else min(
            cfg.data.eval_examples, len(data.x_test))
        x_eval, y_eval = data.x_test[:n_eval], data.y_test[:n_eval]
        version = code_version()
        if lead:
            ledger.append([{"type": "run", "config_id": cfg.config_id(),
                            "code_version": version,
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "signed_by": arts.signer.key_id if arts.signer else ""}],
                          arts.signer)
            _ledger_existing(run, plan, arts, ledger)

        bar = _Bar(total=0, desc=printable(cfg.name), unit="cell", disable=not progress or not lead,
                   dynamic_ncols=True)
        weights = _Weights(run, plan, data, bar, arts, ledger)
        # Two passes at most: the second recomputes cells whose checkpoint this run had to
        # train anew (deleted, say) and came out with other bytes than the one they were
        # computed from.
        for _ in range(2):
            _sync("robustax-sweep-pass")  # every process sees the same cells on disk
            todo = _cells_to_compute(run, plan, weights)
            units = [u for u in plan.units if any(c.cell_id in todo for c in u.cells)
                     or run.read_gradient(u.cells[0].cell_id) is None]
            if not units:
                break
            n_train = len({t for u in units for t in u.trainings if not weights.exists(t)})
            bar.total = bar.n + len(todo) + n_train
            bar.refresh()
            wrapped: dict = {}
            ctx = Context(cfg.name, cfg.data.name, cfg.seed, x_eval, y_eval,
                          cfg.eval.batch_size, version, cfg.config_id(), bar)
            for unit in units:
                _evaluate_unit(unit, todo, weights, plan, run, ctx, wrapped)
                ledger.add_cells([c.cell_id for c in unit.cells], arts.signer)
        bar.close()
        _sync("robustax-sweep-done")  # process 0 has written every cell
        records = run.read_records(only={c.cell_id for c in plan.cells})
        if not records.empty:
            records["run"] = cfg.name  # records.csv is this config's grid: one run name
        run.store_text(run.records_csv, records.to_csv(index=False))
    return records


class _Bar:
    """The progress bar (tqdm): its postfix names labels, escaped (no raw control
    characters on the terminal)."""

    def __init__(self, **kwargs):
        from tqdm.auto import tqdm

        self._bar = tqdm(**kwargs)

    def __getattr__(self, name):
        return getattr(self._bar, name)

    def __setattr__(self, name, value):
        if name == "_bar":
            object.__setattr__(self, name, value)
        else:
            setattr(self._bar, name, value)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._bar.set_postfix_str(printable(s), refresh=refresh)


def _cells_to_compute(run: RunDir, plan: Plan, weights: _Weights) -> set[str]:
    """The plan's cells that are missing or fail verification (each of the latter with a
    one-line warning naming the file): those the run (re)computes."""
    todo = set()
    for unit in plan.units:
        shas = [weights.sha256.get(t) or weights.stored_digest(t) for t in unit.trainings]
        expected = "+".join(shas) if all(shas) else None
        for c in unit.cells:
            problem, _ = run.cell_problem(c.cell_id, expected)
            if problem is None:
                continue
            if problem != MISSING:
                warn(f"{problem}; recomputing that cell")
            todo.add(c.cell_id)
    return todo


class _ReadOnlyRun(RunDir):
    """The run directory as processes other than 0 see it: they read it (to resume the
    same cells and return the records) and write nothing; process 0 writes the same bytes."""

    def store(self, path: Path, data: bytes) -> None:
        pass

    def write_cell(self, record: dict, mask) -> None:
        pass

    def adopt(self) -> None:
        pass

    def remove(self, path: Path) -> None:
        pass

    def set_aside(self, path: Path) -> Path:
        return Path(path)


class _NoLedger:
    """The ledger of a process other than 0: process 0 keeps the run directory's ledger."""

    def append(self, *args, **kwargs) -> None:
        pass

    def add_cells(self, *args, **kwargs) -> None:
        pass

    def add_checkpoint(self, *args, **kwargs) -> None:
        pass

    def check_appendable(self, *args, **kwargs) -> None:
        pass


def _sync(name: str) -> None:
    """A barrier across processes (``jax.distributed``); nothing with one process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
