"""Records and the run directory: one atomic JSON + mask per finished cell.

A cell is (data, model, defense, attack, norm, ε). Its record is written once, after its
per-example correctness mask, each by write-to-temp-then-rename, so a record on disk
always has its mask and a killed sweep leaves only whole cells behind.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench.errors import RobustaxError

CLEAN = "clean"
"""The attack name of the clean-accuracy cell of each model × defense."""

COLUMNS = (
    "run", "data", "model", "defense", "attack", "norm", "eps", "examples", "correct",
    "robust_acc", "ci_low", "ci_high", "seconds", "compile_seconds", "seed", "cell_id",
    "config_id", "checkpoint", "code_version", "attack_options", "model_options",
    "defense_options", "queries_mean", "queries_median", "details",
)

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """The one writer of every artifact (checkpoints, cells, masks, records, tables, plots):
    readers see the old file or the new, never half of one, and the new one survives a crash
    (file and directory entry are fsync'd)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def clopper_pearson(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for an accuracy of ``correct`` / ``n``."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(confidence_level=level,
                                                             method="exact")
    return float(ci.low), float(ci.high)


def accuracy_fields(mask: np.ndarray) -> dict:
    """examples, correct, robust_acc and its 95% interval from a per-example mask."""
    n, k = int(np.size(mask)), int(np.sum(mask))
    low, high = clopper_pearson(k, n)
    return {"examples": n, "correct": k, "robust_acc": k / n, "ci_low": low, "ci_high": high}


def info_fields(mask: np.ndarray, info: dict | None, stage_names: tuple[str, ...] = ()) -> dict:
    """Summaries of an attack's per-example info for one cell.

    ``queries`` (score-based attacks): mean and median over the examples the attack fooled
    (those with a positive count; examples misclassified before any query count 0).
    ``distance`` (minimum-norm attacks): the median of the finite distances found.
    ``stage`` (cascades): how many points each stage broke, in ``details``.
    """
    out = {"queries_mean": float("nan"), "queries_median": float("nan"), "details": ""}
    if not info:
        return out
    details: dict = {}
    if "queries" in info:
        q = np.asarray(info["queries"])[~np.asarray(mask) & (np.asarray(info["queries"]) > 0)]
        if q.size:
            out["queries_mean"], out["queries_median"] = float(q.mean()), float(np.median(q))
    if "distance" in info:
        d = np.asarray(info["distance"], np.float64)
        d = d[np.isfinite(d)]
        details["median_distance"] = float(np.median(d)) if d.size else None
    if "stage" in info:
        st = np.asarray(info["stage"])
        details["misclassified_clean"] = int(np.sum(st == -1))
        details["broken_by"] = {name: int(np.sum(st == i)) for i, name in enumerate(stage_names, 1)}
    out["details"] = json.dumps(details, sort_keys=True) if details else ""
    return out


def make_record(*, run: str, data: str, model: str, defense: str, attack: str, norm: str,
                eps: float, mask: np.ndarray, seconds: float, compile_seconds: float, seed: int,
                cell_id: str, config_id: str = "", checkpoint: str = "", code_version: str = "",
                attack_options: Any = None, model_options: Any = None,
                defense_options: Any = None, info: dict | None = None,
                details: dict | None = None) -> dict:
    """The one record builder (sweeps and ``bench.evaluate``): a row of :data:`COLUMNS`.

    Options are dataclass instances or dicts, stored as sorted JSON ("" when absent);
    ``info`` is the attack's per-example info at this ε (see :func:`info_fields`);
    ``details`` are cell facts merged into the ``details`` JSON (e.g. a generator's training
    time, kept apart from the attack's ``seconds``).
    """
    def as_json(o):
        if o is None:
            return ""
        if dataclasses.is_dataclass(o):
            o = {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
        return json.dumps(o, sort_keys=True, default=str)

    record = {
        "run": run, "data": data, "model": model, "defense": defense, "attack": attack,
        "norm": norm, "eps": float(eps), **accuracy_fields(mask), "seconds": round(seconds, 4),
        "compile_seconds": round(compile_seconds, 4), "seed": seed, "cell_id": cell_id,
        "config_id": config_id, "checkpoint": checkpoint, "code_version": code_version,
        "attack_options": as_json(attack_options), "model_options": as_json(model_options),
        "defense_options": as_json(defense_options),
        **info_fields(mask, info, tuple(n for n, _ in attack_options.stages())
                      if hasattr(attack_options, "stages") else ()),
    }
    if details:
        merged = {**(json.loads(record["details"]) if record["details"] else {}), **details}
        record["details"] = json.dumps(merged, sort_keys=True)
    return record


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The layout of a run directory."""

    root: Path

    @property
    def cells(self) -> Path:
        return self.root / "cells"

    @property
    def masks(self) -> Path:
        return self.root / "masks"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def records_csv(self) -> Path:
        return self.root / "records.csv"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    def write_plan(self, order: dict) -> None:
        """The current grid's order and cell ids, for reports (see :meth:`bench.plan.Plan.order`)."""
        atomic_write_json(self.plan_json, order)

    def read_plan(self) -> dict | None:
        """The plan.json of the last run into this directory (None if there is none)."""
        if not self.plan_json.is_file():
            return None
        try:
            return json.loads(self.plan_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RobustaxError(f"{self.plan_json} is corrupt; rerun `robustax run CONFIG --out "
                                f"{self.root}` to rewrite it") from None

    def checkpoint_path(self, file_name: str) -> Path:
        return self.checkpoints / file_name

    def write_checkpoint(self, file_name: str, data: bytes) -> None:
        atomic_write_bytes(self.checkpoint_path(file_name), data)

    def cell_path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.json"

    def mask_path(self, cell_id: str) -> Path:
        return self.masks / f"{cell_id}.npy"

    def has_cell(self, cell_id: str) -> bool:
        return self.cell_path(cell_id).is_file() and self.mask_path(cell_id).is_file()

    def write_cell(self, record: dict, mask: np.ndarray) -> None:
        """Writes the mask, then the record: a record on disk always has its mask."""
        buf = io.BytesIO()
        np.save(buf, np.asarray(mask, dtype=bool), allow_pickle=False)
        atomic_write_bytes(self.mask_path(record["cell_id"]), buf.getvalue())
        atomic_write_json(self.cell_path(record["cell_id"]), record)

    def read_mask(self, cell_id: str) -> np.ndarray:
        return np.load(self.mask_path(cell_id), allow_pickle=False)

    def read_records(self, only: set[str] | None = None) -> pd.DataFrame:
        """Finished cells (all, or those whose id is in ``only``) as a tidy frame."""
        rows = []
        for p in sorted(self.cells.glob("*.json")):
            if only is not None and p.stem not in only:
                continue
            try:
                rows.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                raise RobustaxError(f"cell record {p} is corrupt; delete it and rerun the "
                                    f"sweep to recompute that cell") from None
        return records_frame(rows)


def records_frame(rows: list[dict]) -> pd.DataFrame:
    """A tidy frame with the record columns, sorted by model, defense, attack, norm, ε."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if frame.empty:
        return frame
    frame["_clean"] = frame["attack"] != CLEAN
    frame = frame.sort_values(["model", "defense", "_clean", "attack", "norm", "eps"],
                              kind="stable").drop(columns="_clean")
    return frame.reset_index(drop=True)
