"""The sweep runner: config -> trained checkpoints -> one record per cell.

Training runs once per (model, defense) and is cached as a safetensors checkpoint keyed
by a hash of everything that determines it; every (attack, ε) of a model × defense is one
cell with a record and a per-example mask, written atomically. Re-running a sweep into the
same directory skips finished cells, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
import numpy as np
import pandas as pd

from bench import engine as ev
from bench.config import AttackConfig, SweepConfig
from bench.data import Dataset, load_dataset
from bench.records import CLEAN, RunDir, accuracy_fields, atomic_write_json, atomic_write_text
from defenses.base import is_wrapper

TRAIN_VERSION = 1
"""Bumped when the training loop changes in a way that changes weights (invalidates caches)."""


def stable_hash(obj: Any, n: int = 12) -> str:
    """A short sha256 of a JSON-serialisable object (dataclasses included)."""
    def default(o):
        if dataclasses.is_dataclass(o):
            return {"__class__": type(o).__name__, **dataclasses.asdict(o)}
        return str(o)

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=default).encode()).hexdigest()[:n]


def key_for(seed: int, *parts: str) -> jax.Array:
    """A PRNG key derived from the seed and names (not grid positions), so adding a model or
    an attack to a config leaves every other cell's randomness unchanged."""
    digest = int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:8], 16)
    return jax.random.fold_in(jax.random.key(seed), digest)


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


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the grid; ``attack`` is None for the clean-accuracy cell.

    ``adaptive`` marks the adaptive evaluation of an inference wrapper (attacks run on its
    differentiable stand-in, e.g. BPDA, and are scored on the wrapper itself).
    """

    model: str
    defense: str
    attack: AttackConfig | None
    eps: float
    adaptive: bool = False

    @property
    def defense_label(self) -> str:
        return f"{self.defense} (adaptive)" if self.adaptive else self.defense

    def identity(self, cfg: SweepConfig) -> dict:
        model = next(m for m in cfg.models if m.label == self.model)
        defense = defense_by_label(cfg, self.defense)
        ident = {
            "data": dataclasses.asdict(cfg.data), "seed": cfg.seed,
            "model": [model.name, list(model.options)], "defense": [defense.name, defense.defense],
            "attack": None if self.attack is None else [self.attack.name, self.attack.attack],
            "eps": self.eps,
        }
        if is_wrapper(defense.defense):  # its numbers also depend on the weights it wraps
            base = defense_by_label(cfg, defense.defense.base)
            ident["base"] = [base.name, base.defense]
        if self.adaptive:
            ident["adaptive"] = True
        return ident

    def cell_id(self, cfg: SweepConfig) -> str:
        attack = CLEAN if self.attack is None else f"{self.attack.label}-{self.attack.attack.norm}"
        defense = f"{self.defense}-adaptive" if self.adaptive else self.defense
        return f"{self.model}.{defense}.{attack}.eps{self.eps:g}.{stable_hash(self.identity(cfg), 10)}"


def defense_by_label(cfg: SweepConfig, label: str):
    return next(d for d in cfg.defenses if d.label == label)


def grid(cfg: SweepConfig) -> list[Cell]:
    """Every cell of the sweep, model-major; wrappers with an adaptive form get both."""
    cells = []
    for m in cfg.models:
        for d in cfg.defenses:
            modes = (False, True) if is_wrapper(d.defense) and hasattr(d.defense, "adaptive") else (False,)
            for adaptive in modes:
                cells.append(Cell(m.label, d.label, None, 0.0, adaptive))
                for a in cfg.attacks:
                    cells.extend(Cell(m.label, d.label, a, e, adaptive) for e in a.eps)
    return cells


def checkpoint_path(run: RunDir, cfg: SweepConfig, data: Dataset, model, defense) -> Path:
    """Where the trained weights of (model, defense) live: named by a hash of their inputs."""
    h = stable_hash({"data": data.fingerprint(), "train_examples": cfg.data.train_examples,
                     "model": [model.name, list(model.options)],
                     "defense": [defense.name, defense.defense], "seed": cfg.seed,
                     "train_version": TRAIN_VERSION})
    return run.checkpoints / f"{model.label}.{defense.label}.{h}.safetensors"


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


def current_cell_ids(run: RunDir) -> set[str] | None:
    """Cell ids of the grid in the run directory's config.json (None if it has none)."""
    from bench.config import parse_config

    path = run.root / "config.json"
    if not path.is_file():
        return None
    cfg = parse_config(json.loads(path.read_text())["config"])
    return {c.cell_id(cfg) for c in grid(cfg)}


def _record(cfg: SweepConfig, cell: Cell, cell_id: str, mask: np.ndarray, seconds: float,
            compile_s: float, checkpoint: str, version: str, model, defense) -> dict:
    a = cell.attack
    return {
        "run": cfg.name, "data": cfg.data.name, "model": cell.model, "defense": cell.defense_label,
        "attack": CLEAN if a is None else a.label, "norm": "none" if a is None else a.attack.norm,
        "eps": float(cell.eps), **accuracy_fields(mask), "seconds": round(seconds, 4),
        "compile_seconds": round(compile_s, 4), "seed": cfg.seed, "cell_id": cell_id,
        "config_id": cfg.config_id(), "checkpoint": checkpoint, "code_version": version,
        "attack_options": "" if a is None else json.dumps(dataclasses.asdict(a.attack), sort_keys=True),
        "model_options": json.dumps(dict(model.options), sort_keys=True),
        "defense_options": json.dumps(dataclasses.asdict(defense.defense), sort_keys=True),
    }


def run_sweep(cfg: SweepConfig, out_dir: str | Path, *, config_text: str | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Runs (or resumes) a sweep into ``out_dir`` and returns the records frame.

    Writes config.json/config.toml, environment.json, checkpoints/, cells/, masks/ and
    records.csv; tables and plots come from :func:`bench.report.write_report`.
    """
    from tqdm.auto import tqdm

    from defenses import load_checkpoint, save_checkpoint
    from models import init_variables, make_logits_fn

    run = RunDir(Path(out_dir))
    _prepare_run_dir(run, cfg, config_text)
    data = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir,
                        train_examples=cfg.data.train_examples)
    n_eval = len(data.x_test) if cfg.data.eval_examples is None else min(
        cfg.data.eval_examples, len(data.x_test))
    x_eval, y_eval = data.x_test[:n_eval], data.y_test[:n_eval]
    version = code_version()

    cells = grid(cfg)
    todo = {c: c.cell_id(cfg) for c in cells}
    todo = {c: i for c, i in todo.items() if not run.has_cell(i)}
    pairs = [(m, d) for m in cfg.models for d in cfg.defenses]

    def trained_by(m, d):  # the training defense whose weights (m, d) evaluates
        return (m, defense_by_label(cfg, d.defense.base)) if is_wrapper(d.defense) else (m, d)

    needed = {(m.label, t.label): (m, t) for m, d in pairs
              if any(c.model == m.label and c.defense == d.label for c in todo)
              for (_, t) in [trained_by(m, d)]}
    n_train = sum(1 for m, t in needed.values()
                  if not checkpoint_path(run, cfg, data, m, t).is_file())
    bar = tqdm(total=len(todo) + n_train, desc=cfg.name, unit="cell", disable=not progress,
               dynamic_ncols=True)

    built: dict = {}  # one module and logits_fn per model: compiled attacks are reused
    weights: dict = {}  # (model, training defense) -> (params, checkpoint id)

    def model_fns(m):
        if m.label not in built:
            module = m.build(data.num_classes, data.mean, data.std)
            built[m.label] = (module, make_logits_fn(module))
        return built[m.label]

    def params_for(m, t):
        if (m.label, t.label) in weights:
            return weights[m.label, t.label]
        module, _ = model_fns(m)
        ckpt = checkpoint_path(run, cfg, data, m, t)
        if ckpt.is_file():
            params, _ = load_checkpoint(
                ckpt, like=init_variables(module, jax.random.key(0), data.image_shape))
        else:
            bar.set_postfix_str(f"training {m.label}/{t.label}", refresh=False)
            t0 = time.perf_counter()
            params = t.defense.train(
                module, data, key_for(cfg.seed, "train", m.label, t.label),
                on_epoch=lambda e, loss: bar.set_postfix_str(
                    f"training {m.label}/{t.label} epoch {e + 1}/{t.defense.epochs} loss {loss:.3f}",
                    refresh=False))
            save_checkpoint(ckpt, params, {"model": m.name, "model_options": dict(m.options),
                                           "defense": t.name, "data": data.name,
                                           "train_seconds": time.perf_counter() - t0})
            bar.update(1)
        weights[m.label, t.label] = (params, ckpt.stem.rsplit(".", 1)[-1])
        return weights[m.label, t.label]

    for m, d in pairs:
        mine = [c for c in todo if c.model == m.label and c.defense == d.label]
        if not mine:
            continue
        _, logits_fn = model_fns(m)
        params, ckpt_id = params_for(*trained_by(m, d))
        if is_wrapper(d.defense):
            key = ("wrapped", m.label, d.label)
            if key not in built:  # stable function objects keep the compile cache warm
                built[key] = (d.defense.wrap(logits_fn),
                              d.defense.adaptive(logits_fn) if hasattr(d.defense, "adaptive") else None)
            eval_fn, adaptive_fn = built[key]
        else:
            eval_fn, adaptive_fn = logits_fn, None

        def write(cell, mask, seconds, compile_s):
            cid = todo[cell]
            run.write_cell(_record(cfg, cell, cid, mask, seconds, compile_s, ckpt_id, version, m, d),
                           mask)
            bar.update(1)

        for adaptive in (False, True):
            group = [c for c in mine if c.adaptive == adaptive]
            if not group:
                continue
            tag = f"{m.label}/{group[0].defense_label}"
            clean = [c for c in group if c.attack is None]
            if clean:
                bar.set_postfix_str(f"{tag} clean", refresh=False)
                t0 = time.perf_counter()
                mask = ev.clean_correct(eval_fn, params, x_eval, y_eval, cfg.eval.batch_size)
                write(clean[0], mask, time.perf_counter() - t0, 0.0)
            for a in cfg.attacks:
                missing = [c for c in group if c.attack is a]
                if not missing:
                    continue
                bar.set_postfix_str(f"{tag} {a.label} {a.attack.norm}", refresh=False)
                masks, seconds, compile_s = ev.attack_correct(
                    a.attack, eval_fn, params, x_eval, y_eval, [c.eps for c in missing],
                    key_for(cfg.seed, "attack", m.label, d.label, a.label, a.attack.norm),
                    cfg.eval.batch_size, attack_logits_fn=adaptive_fn if adaptive else None)
                for c, mask in zip(missing, masks):
                    write(c, mask, seconds / len(missing), compile_s / len(missing))
    bar.close()
    records = run.read_records(only=set(c.cell_id(cfg) for c in cells))
    atomic_write_text(run.records_csv, records.to_csv(index=False))
    return records
