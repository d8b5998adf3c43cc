"""The regression gate: two run directories compared cell by cell, pair by pair.

``robustax compare BASELINE NEW`` matches the cells of two runs by what they are (``--by id``:
data, seed, labels and every option of model, defense and attack, norm and ε; not the weights
digest, so a retrained checkpoint of the same recipe still matches) or by name only (``--by
label``: model, defense, attack, norm, ε; to compare two training recipes under the same
names). Each matched pair is tested on its per-example masks with the exact McNemar test: of
the ``b`` examples robust in the baseline only and the ``c`` robust in the new run only, under
"no change" each discordant example is equally likely either way, so ``b ~ Binomial(b + c,
1/2)``. The p-values are Holm-corrected over the matched cells (family-wise error ≤ α). A cell
*fails the gate* when its corrected p-value is below α, its accuracy moved by more than the
tolerance (percentage points) and the move is in the gated direction (``drop``, ``rise`` or
``any``: a rise can mean an attack that got weaker).

The difference's 95% interval is Newcombe's hybrid score interval for paired proportions
(1998, method 10): the exact conditional interval that goes with the exact test is one-sided
whenever all discordant examples go one way (Newcombe's own criticism of it), the regression
case. Identical masks give a short interval around 0, not [0, 0]: n examples bound what an
unseen change could be.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.errors import RobustaxError, printable
from bench.store.io import atomic_write_text
from bench.store.records import CLEAN, RunDir

KEYS = {
    "label": ("model", "defense", "attack", "norm", "eps"),
    "id": ("data", "seed", "model", "model_options", "defense", "defense_options", "attack",
           "attack_options", "norm", "eps"),
}
"""The columns a cell is matched on, per ``--by``."""

FAIL_ON = ("drop", "rise", "any")

SHOWN = ("model", "defense", "attack", "norm", "eps")


@dataclasses.dataclass(frozen=True)
class McNemar:
    """An exact McNemar test on two paired masks: ``b`` correct only in the first, ``c`` only
    in the second; ``statistic = min(b, c)``; ``p`` two-sided; ``low``/``high``: the 95%
    interval of the difference (second − first) in accuracy (:func:`paired_difference_ci`)."""

    n: int
    b: int
    c: int
    statistic: int
    p: float
    diff: float
    low: float
    high: float


def mcnemar(first: np.ndarray, second: np.ndarray, level: float = 0.95) -> McNemar:
    """Exact McNemar test of paired boolean masks (``scipy.stats.binomtest`` on the
    discordant pairs)."""
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    if first.shape != second.shape:
        raise RobustaxError(f"masks of {first.size} and {second.size} examples cannot be "
                            f"paired; compare runs on the same test examples")
    n = int(first.size)
    if n == 0:
        raise RobustaxError("masks with no examples cannot be compared")
    b = int(np.sum(first & ~second))
    c = int(np.sum(~first & second))
    p = 1.0 if b + c == 0 else float(stats.binomtest(c, b + c, 0.5).pvalue)
    low, high = paired_difference_ci(int(np.sum(first & second)), b, c,
                                     int(np.sum(~first & ~second)), level)
    return McNemar(n, b, c, min(b, c), p, (c - b) / n, low, high)


def paired_difference_ci(a: int, b: int, c: int, d: int,
                         level: float = 0.95) -> tuple[float, float]:
    """Newcombe's (1998) hybrid score interval, his method 10, for the difference of two
    paired proportions, second − first: ``a`` pairs correct in both, ``b`` in the first only,
    ``c`` in the second only, ``d`` in neither. Each marginal proportion gets its Wilson
    interval (scipy), combined with the correlation φ of the 2 × 2 table (0 when a margin is
    empty). Unlike the conditional exact interval it is not one-sided when b or c is 0."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n

    def wilson(k):
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
        return ci.low, ci.high

    (l1, u1), (l2, u2) = wilson(a + b), wilson(a + c)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / np.sqrt(float(margins)) if margins else 0.0
    theta = p2 - p1
    down = np.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    up = np.sqrt(max((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2, 0.0))
    return max(theta - down, -1.0), min(theta + up, 1.0)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control over all of ``p``)."""
    p = np.asarray(p, np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _load(path: str | Path, which: str) -> tuple[RunDir, pd.DataFrame]:
    """The current grid's cells of a run directory (attacks at ε = 0 left out: they repeat the
    clean cell, which the report checks per example)."""
    run = RunDir(Path(path))
    if not run.cells.is_dir():
        raise RobustaxError(f"{which} {path} is not a run directory (no cells/); pass the --out "
                            f"directory of a `robustax run`")
    plan = run.read_plan()
    records = run.read_records(only=None if plan is None else set(plan["cells"]))
    if records.empty:
        raise RobustaxError(f"{which} {path} has no finished cells; run the sweep first")
    records = records[(records["attack"] == CLEAN) | (records["eps"] > 0)]
    return run, records.reset_index(drop=True)


def _mask(run: RunDir, cell_id: str) -> np.ndarray:
    try:
        return run.read_mask(cell_id)
    except (OSError, ValueError):
        raise RobustaxError(f"{run.mask_path(cell_id)} is missing or corrupt; rerun the sweep "
                            f"into {run.root} to recompute that cell") from None


def _keyed(records: pd.DataFrame, by: str, which: str) -> pd.DataFrame:
    keys = list(KEYS[by])
    frame = records.copy()
    for k in ("attack_options", "model_options", "defense_options"):
        frame[k] = frame[k].fillna("").astype(str)
    dup = frame.duplicated(keys, keep=False)
    if dup.any():
        row = frame[dup].iloc[0]
        raise RobustaxError(
            f"{which} has several cells for {'/'.join(str(row[k]) for k in SHOWN)} when matched "
            f"by {by}; use --by id, or give the attacks or defenses distinct labels")
    return frame.set_index(keys)


def compare_runs(baseline: str | Path, new: str | Path, *, tolerance: float = 1.0,
                 alpha: float = 0.05, fail_on: str = "any", by: str = "id") -> pd.DataFrame:
    """One row per cell of either run: matched cells with the McNemar test, Holm-corrected
    p-values and whether they fail the gate; unmatched cells with ``status`` ``only in
    baseline`` / ``only in new``. Raises :class:`RobustaxError` when nothing can be matched
    or the runs are on different data."""
    if fail_on not in FAIL_ON:
        raise RobustaxError(f"--fail-on {fail_on!r}; choose one of: {', '.join(FAIL_ON)}")
    if by not in KEYS:
        raise RobustaxError(f"--by {by!r}; choose one of: {', '.join(KEYS)}")
    if not tolerance >= 0:
        raise RobustaxError(f"--tolerance {tolerance} must be ≥ 0 (percentage points)")
    if not 0 < alpha < 1:
        raise RobustaxError(f"--alpha {alpha} must be in (0, 1)")
    base_run, base = _load(baseline, "baseline")
    new_run, cur = _load(new, "new run")
    for col, what in (("data", "data sets"), ("examples", "numbers of test examples")):
        a, b = sorted(set(base[col])), sorted(set(cur[col]))
        if a != b:
            raise RobustaxError(f"the runs are on different {what} ({', '.join(map(str, a))} vs "
                                f"{', '.join(map(str, b))}); compare runs of the same data")
    bk, nk = _keyed(base, by, "baseline"), _keyed(cur, by, "new run")
    both = bk.index.intersection(nk.index, sort=False)
    if len(both) == 0:
        hint = ""
        if by == "id" and len(_keyed(base, "label", "baseline").index.intersection(
                _keyed(cur, "label", "new run").index)):
            hint = " (cells share labels but differ in seed or options: try --by label)"
        raise RobustaxError(f"no cell of {new} matches a cell of {baseline} by {by}{hint}")
    rows = []
    for key in both:
        b, n = bk.loc[key], nk.loc[key]
        t = mcnemar(_mask(base_run, b["cell_id"]), _mask(new_run, n["cell_id"]))
        rows.append({**{k: dict(zip(KEYS[by], key))[k] for k in SHOWN},
                     "status": "matched", "examples": t.n,
                     "base_acc": 100 * b["robust_acc"], "new_acc": 100 * n["robust_acc"],
                     "diff": 100 * t.diff, "diff_low": 100 * t.low, "diff_high": 100 * t.high,
                     "base_only": t.b, "new_only": t.c, "statistic": t.statistic, "p": t.p,
                     "same_weights": b["checkpoint"] == n["checkpoint"],
                     "base_cell": b["cell_id"], "new_cell": n["cell_id"]})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy())
    direction = {"drop": out["diff"] < 0, "rise": out["diff"] > 0,
                 "any": out["diff"] != 0}[fail_on]
    out["fails"] = (out["p_holm"] < alpha) & (out["diff"].abs() > tolerance) & direction
    only = []
    for which, frame, other in (("only in baseline", bk, nk), ("only in new", nk, bk)):
        for key in frame.index.difference(other.index, sort=False):
            row = frame.loc[key]
            only.append({**{k: dict(zip(KEYS[by], key))[k] for k in SHOWN}, "status": which,
                         ("base_acc" if which == "only in baseline" else "new_acc"):
                             100 * row["robust_acc"],
                         ("base_cell" if which == "only in baseline" else "new_cell"):
                             row["cell_id"]})
    if only:
        out = pd.concat([out, pd.DataFrame(only)], ignore_index=True)
    out.attrs.update(tolerance=tolerance, alpha=alpha, fail_on=fail_on, by=by,
                     baseline=str(baseline), new=str(new))
    return out


def verdict(table: pd.DataFrame) -> str:
    """One line: how many cells matched, changed, and fail the gate."""
    a = table.attrs
    matched = table[table["status"] == "matched"]
    changed = int(((matched["base_only"] + matched["new_only"]) > 0).sum())
    fails = int(matched["fails"].sum())
    only_b = int((table["status"] == "only in baseline").sum())
    only_n = int((table["status"] == "only in new").sum())
    head = "FAIL" if fails else "PASS"
    same_id = int((matched["base_cell"] == matched["new_cell"]).sum())
    text = (f"{head}: {len(matched)} cells matched by {a['by']} ({same_id} with the same cell "
            f"id), {changed} with any per-example "
            f"change, {fails} changed significantly (Holm-corrected exact McNemar p < "
            f"{a['alpha']:g}) by more than {a['tolerance']:g} points "
            f"({'either way' if a['fail_on'] == 'any' else a['fail_on'] + 's'} gated)")
    if only_b or only_n:
        text += f"; {only_b} cells only in the baseline, {only_n} only in the new run"
    return text + "."


def _fmt(table: pd.DataFrame, changed_only: bool) -> pd.DataFrame:
    """The table people read: labels, both accuracies, the difference with its interval."""
    m = table[table["status"] == "matched"]
    if changed_only:
        m = m[(m["base_only"] + m["new_only"]) > 0]
    rows = []
    for r in m.itertuples():
        rows.append({"model": r.model, "defense": r.defense, "attack": r.attack,
                     "norm": r.norm, "ε": f"{r.eps:g}", "baseline": f"{r.base_acc:.1f}",
                     "new": f"{r.new_acc:.1f}",
                     "Δ (pp)": f"{r.diff:+.1f}",
                     "95% CI": f"[{r.diff_low:+.1f}, {r.diff_high:+.1f}]",
                     "lost/won": f"{int(r.base_only)}/{int(r.new_only)}",
                     "p (Holm)": f"{r.p_holm:.2g}",
                     "gate": "FAIL" if r.fails else ""})
    return pd.DataFrame(rows, columns=["model", "defense", "attack", "norm", "ε", "baseline",
                                       "new", "Δ (pp)", "95% CI", "lost/won", "p (Holm)",
                                       "gate"])


def _unmatched(table: pd.DataFrame, limit: int | None = None) -> list[str]:
    """One line per side listing the cells only that run has (the first ``limit`` of them)."""
    lines = []
    for which in ("only in baseline", "only in new"):
        u = table[table["status"] == which]
        if len(u):
            names = [f"{r.model}/{r.defense}/{r.attack} {r.norm} ε={r.eps:g}"
                     for r in u.itertuples()]
            more = len(names) - limit if limit is not None and len(names) > limit else 0
            text = ", ".join(names[:len(names) - more]) + (f", … ({more} more)" if more else "")
            lines.append(f"{len(u)} cells {which}: {text}")
    return lines


def markdown(table: pd.DataFrame) -> str:
    """compare.md: the verdict, every matched cell with its test, and the unmatched cells."""
    a = table.attrs
    body = _fmt(table, changed_only=False).to_markdown(index=False, disable_numparse=True)
    parts = [f"# Regression check\n\nbaseline `{a['baseline']}`, new `{a['new']}`\n",
             verdict(table) + "\n",
             "Per cell: robust accuracy (%) in both runs, the difference (new − baseline) with "
             "its 95% interval (Newcombe's paired score interval), examples robust "
             "only in the baseline / only in the new run, and the exact McNemar p-value, "
             "Holm-corrected over the matched cells.\n", body + "\n"]
    weights = table[(table["status"] == "matched") & ~table["same_weights"].astype(bool)]
    if len(weights):
        parts.append(f"{len(weights)} matched cells evaluate different checkpoints (the "
                     f"weights digest changed: retrained or changed training code).\n")
    parts += [f"- {line}\n" for line in _unmatched(table)]
    return "\n".join(parts)


def terminal(table: pd.DataFrame) -> str:
    """What ``robustax compare`` prints: the cells that changed at all, and the verdict."""
    from tabulate import tabulate

    shown = _fmt(table, changed_only=True).map(printable)  # labels: no raw control characters
    m = table[table["status"] == "matched"]
    lines = []
    if len(shown):
        lines.append(tabulate(shown.to_numpy().tolist(), headers=list(shown.columns),
                              tablefmt="simple", disable_numparse=True))
        lines.append(f"({len(m) - len(shown)} more matched cells have identical masks)")
    else:
        lines.append(f"all {len(m)} matched cells have identical per-example masks")
    lines += [printable(line) for line in _unmatched(table, limit=6)]
    lines.append(verdict(table))
    return "\n".join(lines) + "\n"


def write(table: pd.DataFrame, out: str | Path) -> list[Path]:
    """compare.csv (every column) and compare.md in ``out``."""
    out = Path(out)
    atomic_write_text(out / "compare.csv", table.to_csv(index=False))
    atomic_write_text(out / "compare.md", markdown(table))
    atomic_write_text(out / "compare.json", json.dumps(
        {**table.attrs, "verdict": verdict(table),
         "fails": int(table.get("fails", pd.Series(dtype=bool)).fillna(False).sum())},
        indent=2) + "\n")
    return [out / "compare.csv", out / "compare.md", out / "compare.json"]


def main(baseline: str, new: str, *, tolerance: float, alpha: float, fail_on: str, by: str,
         out: str | None) -> int:
    """The ``robustax compare`` command: prints and writes the table; returns 1 when a cell
    fails the gate, else 0 (bad input raises :class:`RobustaxError`: exit 2)."""
    table = compare_runs(baseline, new, tolerance=tolerance, alpha=alpha, fail_on=fail_on, by=by)
    folder = Path(out) if out else Path(new) / "compare"
    paths = write(table, folder)
    print(terminal(table), end="")
    print(f"wrote {', '.join(p.name for p in paths)} to {folder}/")
    return 1 if bool(table["fails"].fillna(False).any()) else 0
