"""Records and the run directory: one atomic JSON + mask per finished cell.

A cell is (data, model, defense, attack, norm, ε). Its record is written once, after its
per-example correctness mask, each by write-to-temp-then-rename, so a record on disk
always has its mask and a killed sweep leaves only whole cells behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench.errors import RobustaxError, warn
from bench.store.io import (
    atomic_write_bytes,
    json_bytes,
    mask_bytes,
    move_aside,
)
from bench.store.ledger_view import LedgerView
from bench.store.manifest import Manifest, sha256_bytes

CLEAN = "clean"
"""The attack name of the clean-accuracy cell of each model × defense."""

COLUMNS = (
    "run", "data", "model", "defense", "attack", "norm", "eps", "examples", "correct",
    "robust_acc", "ci_low", "ci_high", "seconds", "compile_seconds", "seed", "cell_id",
    "config_id", "checkpoint", "code_version", "attack_options", "model_options",
    "defense_options", "queries_mean", "queries_median", "details", "mask_sha256",
    "checkpoint_sha256",
)

REQUIRED = ("cell_id", "model", "defense", "attack", "norm", "eps", "examples", "correct")
"""Fields without which a cell file is not a record (it is recomputed)."""

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
    ``stage`` (cascades): how many points each stage broke and the stages' order, in
    ``details`` (AutoAttack's waterfall, :mod:`bench.reports.waterfall`).
    ``draw_correct`` (a random model scored over D draws, ``[N, D]``): ``draws``, the
    accuracy of each single draw (``draw_acc``) and their mean (``draw_acc_mean``), in
    ``details``; the mask is the AND over the draws.
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
        details["stages"] = list(stage_names)  # the cascade's order (broken_by is sorted)
    if "draw_correct" in info:
        per_draw = np.asarray(info["draw_correct"]).mean(axis=0)
        details["draws"] = int(per_draw.size)
        details["draw_acc"] = [float(a) for a in per_draw]
        details["draw_acc_mean"] = float(per_draw.mean())
    out["details"] = json.dumps(details, sort_keys=True) if details else ""
    return out


def make_record(fields: dict, mask: np.ndarray, info: dict | None = None,
                stages: tuple[str, ...] = (), details: dict | None = None) -> dict:
    """A row of :data:`COLUMNS`: the descriptive ``fields`` (labels, ε, timing, identity and
    provenance; built by :func:`bench.sweep.unit.record_of`, the one record constructor), the
    accuracy and interval of ``mask``, the attack's per-example ``info`` at this ε (see
    :func:`info_fields`; ``stages``: a cascade's stage names) and the digest of the mask's
    bytes as stored (:func:`mask_bytes`). ``details`` are cell facts merged into the
    ``details`` JSON (e.g. a generator's training time, kept apart from ``seconds``)."""
    record = {**fields, **accuracy_fields(mask), **info_fields(mask, info, stages),
              "mask_sha256": sha256_bytes(mask_bytes(mask))}
    if details:
        merged = {**(json.loads(record["details"]) if record["details"] else {}), **details}
        record["details"] = json.dumps(merged, sort_keys=True)
    return {c: record[c] for c in COLUMNS if c in record} | {
        k: v for k, v in record.items() if k not in COLUMNS}


LOCK_NAME = ".robustax.lock"
"""The run lock (``filelock``) in a run directory; ``.robustax.lock.owner`` says who holds it."""


@contextlib.contextmanager
def run_lock(root: Path, command: str):
    """Holds the run directory's lock for ``command`` (``run``, ``report``): one robustax
    process writes a run directory at a time. A second one stops at once with a one-line
    error naming the holder (pid, host, command, since when). The lock is an OS file lock
    (``filelock``), released by the kernel when its holder dies, so a killed run never leaves
    the directory locked."""
    from filelock import FileLock, Timeout

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK_NAME), timeout=0)
    owner = root / f"{LOCK_NAME}.owner"
    try:
        lock.acquire()
    except Timeout:
        try:
            o = json.loads(owner.read_text())
            who = (f"`robustax {o['command']}` (pid {o['pid']} on {o['host']}, since "
                   f"{o['since']})")
        except (OSError, ValueError, KeyError, TypeError):
            who = "another robustax process"
        raise RobustaxError(f"run directory {root} is in use by {who}; wait for it to finish "
                            f"or pass another --out") from None
    try:
        atomic_write_bytes(owner, json_bytes({
            "pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        yield
    finally:
        lock.release()


RUN_MARKERS = ("manifest.json", "cells", "checkpoints", "ledger.jsonl", LOCK_NAME)
"""Names only a run directory holds (a run takes its lock before it writes anything;
``checkpoints/`` alone: trained weights copied in to be reused)."""


def check_run_directory(root: Path) -> None:
    """Whether robustax may write a run into ``root``: it is new, empty or a run directory
    (holds one of :data:`RUN_MARKERS`). Anything else holds someone's own files: refused with
    one line, before anything in it is touched."""
    root = Path(root)
    if not root.is_dir():
        return
    names = sorted(p.name for p in root.iterdir())
    if any(m in names for m in RUN_MARKERS):
        return
    own = [n for n in names if not n.startswith(".")]
    if own:
        shown = ", ".join(own[:3]) + (", …" if len(own) > 3 else "")
        raise RobustaxError(f"--out {root} is not a robustax run directory (no manifest.json or "
                            f"cells/) and holds other files ({shown}); nothing was written: "
                            f"pass a new or empty directory, or the --out of a `robustax run`")


def is_file_name(name: Any) -> bool:
    """Whether ``name`` (a cell id read from plan.json) is a plain file name: never a path
    (no separator, no leading dot, no control characters), at most 200 characters."""
    return (isinstance(name, str) and 0 < len(name) <= 200 and name.isprintable()
            and "/" not in name and "\\" not in name and not name.startswith("."))

MISSING = "missing"
""":meth:`RunDir.cell_problem` of a cell that was never written (computed without a warning)."""


def _at(name: str) -> property:
    """A :class:`RunDir` property: the path ``name`` inside the run directory."""
    return property(lambda self: self.root / name)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The layout of a run directory, and the one way files get into it and out of it.

    Every write records the file's sha256 in the run's :class:`~bench.store.manifest.Manifest`
    first; every read of a cell, mask or checkpoint checks it (see :meth:`cell_problem`).
    """

    root: Path

    @functools.cached_property
    def manifest(self) -> Manifest:
        return Manifest(self.root)

    @functools.cached_property
    def ledger(self) -> LedgerView:
        return LedgerView(self.root)

    # Where each kind of artifact lives in a run directory.
    cells = _at("cells")
    masks = _at("masks")
    checkpoints = _at("checkpoints")
    tables = _at("tables")
    plots = _at("plots")
    records_csv = _at("records.csv")
    plan_json = _at("plan.json")

    # -- writing ----------------------------------------------------------------------------
    def store(self, path: Path, data: bytes) -> None:
        """Writes one artifact atomically, its digest recorded in the manifest first."""
        self.manifest.write({Path(path): data})

    def store_text(self, path: Path, text: str) -> None:
        self.store(path, text.encode())

    def store_json(self, path: Path, obj: Any) -> None:
        self.store(path, json_bytes(obj))

    def remove(self, path: Path) -> None:
        """Deletes an artifact and its manifest entry."""
        self.manifest.remove(Path(path))

    def set_aside(self, path: Path) -> Path:
        """Renames a corrupt file to ``<name>.corrupt`` (kept for a look, never read again)
        and drops its manifest entry; returns the new path."""
        self.manifest.record({Path(path): None})
        aside = move_aside(Path(path))
        return aside

    def write_plan(self, order: dict) -> None:
        """The current grid's order and cell ids, for reports (see :meth:`bench.sweep.plan.Plan.order`)."""
        self.store_json(self.plan_json, order)

    def read_plan(self) -> dict | None:
        """The plan.json of the last run into this directory (None if there is none)."""
        if not self.plan_json.is_file():
            return None
        fix = f"rerun `robustax run CONFIG --out {self.root}` to rewrite it"
        data = self.plan_json.read_bytes()
        if self.manifest.state == "ok" and (problem := self.manifest.problem(self.plan_json, data)):
            raise RobustaxError(f"{problem}; {fix}")
        try:
            plan = json.loads(data.decode("utf-8"))
            if not isinstance(plan, dict) or not isinstance(plan.get("cells"), list) or not all(
                    is_file_name(c) for c in plan["cells"]):
                raise ValueError
            return plan
        except (ValueError, UnicodeDecodeError):
            raise RobustaxError(f"{self.plan_json} is corrupt; {fix}") from None

    def checkpoint_path(self, file_name: str) -> Path:
        return self.checkpoints / file_name

    def write_checkpoint(self, file_name: str, data: bytes) -> str:
        """Writes a checkpoint; returns its sha256."""
        self.store(self.checkpoint_path(file_name), data)
        return sha256_bytes(data)

    def verify_checkpoint(self, file_name: str, data: bytes) -> str:
        """The sha256 of a checkpoint's bytes ``data`` once they match the manifest; a
        damaged or foreign file is a one-line error naming it and the fix."""
        problem = self.manifest.problem(self.checkpoint_path(file_name), data)
        if problem:
            raise RobustaxError(f"checkpoint {problem}: it is damaged or was replaced; delete it "
                                f"to retrain (or restore the original file)")
        return sha256_bytes(data)

    def checkpoint_digest(self, file_name: str) -> str | None:
        """The recorded sha256 of a checkpoint whose file exists, else None."""
        path = self.checkpoint_path(file_name)
        return self.manifest.digest(path) if path.is_file() else None

    def damaged_checkpoints(self) -> list[str]:
        """One line per file in checkpoints/ whose bytes are not those the manifest lists
        (damaged or replaced after it was written): a run stops at such a checkpoint when it
        needs it; a report of cells that no longer need it says so and goes on."""
        if self.manifest.state != "ok" or not self.checkpoints.is_dir():
            return []
        out = []
        for p in sorted(self.checkpoints.iterdir()):
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".corrupt") \
                    and (problem := self.manifest.problem(p, p.read_bytes())):
                out.append(f"checkpoint {problem}: damaged or replaced after its cells "
                           f"finished (they are kept; `robustax verify` fails on it); restore the original "
                           f"file, or delete it to retrain, before adding cells that need it")
        return out

    def cell_path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.json"

    def mask_path(self, cell_id: str) -> Path:
        return self.masks / f"{cell_id}.npy"

    def has_cell(self, cell_id: str) -> bool:
        """Whether the cell is on disk and verified (see :meth:`cell_problem`)."""
        return self.cell_problem(cell_id)[0] is None

    def write_cell(self, record: dict, mask: np.ndarray) -> None:
        """Writes the mask, then the record (which holds the mask's digest), their digests
        recorded in the manifest first: a record on disk always has its mask."""
        mb = mask_bytes(mask)
        record = {**record, "mask_sha256": sha256_bytes(mb)}
        self.manifest.write({self.mask_path(record["cell_id"]): mb,
                             self.cell_path(record["cell_id"]): json_bytes(record)})

    # -- reading and verifying ----------------------------------------------------------------
    def cell_problem(self, cell_id: str, checkpoint_sha256: str | None = None
                     ) -> tuple[str | None, dict | None]:
        """(problem, record) of a cell: problem is None for a verified cell, :data:`MISSING`
        when its record was never written, else one line naming the damaged file.

        Verified means: the record's and the mask's bytes are those the manifest lists, the
        record is a JSON object with the record fields and this id, the mask holds the
        digest the record names, loads as a bool vector of ``examples`` entries with
        ``correct`` of them true, and (when ``checkpoint_sha256`` is given and the record
        names one) the cell was computed from that checkpoint.
        """
        path, mpath = self.cell_path(cell_id), self.mask_path(cell_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return MISSING, None
        if problem := self.manifest.problem(path, data):
            return problem, None
        try:
            record = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return f"{path} is not a JSON cell record", None
        if not isinstance(record, dict) or any(k not in record for k in REQUIRED):
            return f"{path} is not a cell record (fields missing)", None
        if record["cell_id"] != cell_id:
            return f"{path} holds cell {record['cell_id']!r}, not its own", None
        try:
            mdata = mpath.read_bytes()
        except FileNotFoundError:
            return f"{mpath}, the mask of {path}, is missing", None
        if problem := self.manifest.problem(mpath, mdata):
            return problem, None
        if record.get("mask_sha256") and record["mask_sha256"] != sha256_bytes(mdata):
            return f"{mpath} is not the mask that {path} was written with", None
        try:
            mask = np.load(io.BytesIO(mdata), allow_pickle=False)
        except (ValueError, OSError, EOFError):
            return f"{mpath} is not a readable mask", None
        if (mask.dtype != bool or mask.ndim != 1 or mask.size != record["examples"]
                or int(mask.sum()) != record["correct"]):
            return f"{path} and its mask {mpath} disagree on the counts", None
        if (checkpoint_sha256 and record.get("checkpoint_sha256")
                and record["checkpoint_sha256"] != checkpoint_sha256):
            return f"{path} was computed from other weights than the checkpoint now there", None
        if problem := self._info_problem(cell_id):
            return problem, None
        entry = self.ledger.cell(cell_id)
        if entry is not None:
            for p, d, field in ((path, data, "record_sha256"), (mpath, mdata, "mask_sha256")):
                if entry.get(field) != sha256_bytes(d):
                    return (f"{p} differs from ledger entry {entry.get('seq')} (changed after "
                            f"the ledger recorded it)"), None
        return None, record

    def _info_problem(self, cell_id: str) -> str | None:
        """A cell's per-example info (``info/<id>.npz``), when it has one, must be what the
        manifest lists and load as arrays."""
        ipath = self.info_path(cell_id)
        try:
            data = ipath.read_bytes()
        except FileNotFoundError:
            if self.manifest.state == "ok" and self.manifest.get(ipath) is not None:
                return f"{ipath}, the attack info of {self.cell_path(cell_id)}, is missing"
            return None
        if problem := self.manifest.problem(ipath, data):
            return problem
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as f:
                for k in f.files:
                    f[k]
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile):
            return f"{ipath} is not a readable info file"
        return None

    def read_mask(self, cell_id: str) -> np.ndarray:
        """A verified mask (a damaged one is a one-line error naming the file)."""
        mpath = self.mask_path(cell_id)
        data = mpath.read_bytes()
        if problem := self.manifest.problem(mpath, data):
            raise RobustaxError(f"{problem}; rerun `robustax run CONFIG --out {self.root}` to "
                                f"recompute that cell")
        return np.load(io.BytesIO(data), allow_pickle=False)

    def info_path(self, cell_id: str) -> Path:
        return self.root / "info" / f"{cell_id}.npz"

    def write_info(self, cell_id: str, info: dict) -> None:
        """The attack's per-example info of a cell (``queries``, ``first_fooled_step``, ...),
        for curves over the attack's budget from one run; written before the cell's record."""
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in info.items()})
        self.store(self.info_path(cell_id), buf.getvalue())

    def read_info(self, cell_id: str) -> dict[str, np.ndarray]:
        """A cell's per-example attack info ({} when none was stored)."""
        path = self.info_path(cell_id)
        if not path.is_file():
            return {}
        data = path.read_bytes()
        if problem := self.manifest.problem(path, data):
            raise RobustaxError(f"{problem}; rerun `robustax run CONFIG --out {self.root}` to "
                                f"recompute that cell")
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def gradient_path(self, cell_id: str) -> Path:
        return self.root / "gradients" / f"{cell_id}.json"

    def read_gradient(self, cell_id: str) -> dict | None:
        """A row's zero-gradient counts (``gradients/<clean cell>.json``); None when missing,
        or damaged (digest differs from the manifest's, not JSON): ``run`` recomputes it."""
        path = self.gradient_path(cell_id)
        if not path.is_file():
            return None
        data = path.read_bytes()
        if self.manifest.problem(path, data):
            return None
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return doc if isinstance(doc, dict) else None

    def read_records(self, only: set[str] | None = None) -> pd.DataFrame:
        """Finished cells (all, or those whose id is in ``only``) as a tidy frame; cells not
        written are left out, a damaged one is a one-line error naming the file."""
        ids = ([p.stem for p in sorted(self.cells.glob("*.json"))] if only is None
               else sorted(only))
        rows = []
        for cell_id in ids:
            problem, record = self.cell_problem(cell_id)
            if problem == MISSING:
                continue
            if problem:
                raise RobustaxError(f"{problem}; rerun `robustax run CONFIG --out {self.root}` "
                                    f"to recompute that cell")
            rows.append(record)
        return records_frame(rows)

    def adopt(self) -> None:
        """Gives a run directory without a readable manifest (written by robustax before
        manifests, or with manifest.json damaged) a new one: every file that passes the
        checks robustax can still make is listed (cells whose record and mask agree, every
        checkpoint, JSON files that parse), with one warning. Cells that fail are left out,
        so they are recomputed. Nothing to do when the manifest is fine."""
        m = self.manifest
        prior = m.state
        if prior == "ok":
            return
        if prior == "corrupt":
            move_aside(m.path)
        m.files, m.state = {}, "missing"  # problem() now checks consistency only
        files = [p for p in self.root.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
                 and p.name != m.path.name and not p.name.endswith(".corrupt")]
        entries = {p: p.read_bytes() for p in files if p.parent not in (self.cells, self.masks)}
        cell_ids = [p.stem for p in self.cells.glob("*.json")]
        kept = [c for c in cell_ids if self.cell_problem(c)[0] is None]
        for c in kept:
            for p in (self.cell_path(c), self.mask_path(c)):
                entries[p] = p.read_bytes()
        m.record(entries)
        if files:
            what = "a corrupt" if prior == "corrupt" else "no"
            warn(f"{self.root} had {what} {m.path.name}; made a new one listing the "
                 f"{len(kept)} of {len(cell_ids)} cells that pass the consistency checks (the "
                 f"others are recomputed) and {len(entries) - 2 * len(kept)} other files")


def records_frame(rows: list[dict]) -> pd.DataFrame:
    """A tidy frame with the record columns, sorted by model, defense, attack, norm, ε."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if frame.empty:
        return frame
    frame["_clean"] = frame["attack"] != CLEAN
    frame = frame.sort_values(["model", "defense", "_clean", "attack", "norm", "eps"],
                              kind="stable").drop(columns="_clean")
    return frame.reset_index(drop=True)
