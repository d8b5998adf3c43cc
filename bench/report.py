"""Tables and plots from records: what goes into a paper.

Tables: rows model × defense, columns clean and attack × norm × ε, robust accuracy in %,
as CSV, Markdown (tabulate) and LaTeX (pandas/jinja2), plus the per-example worst case over
the attacks that share a norm and ε (AutoAttack's rule, from the stored masks). Plots: accuracy vs ε per attack and
norm, one line per model × defense with its 95% interval shaded, as PNG and PDF.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import CLEAN, RunDir, accuracy_fields, atomic_write_bytes, atomic_write_text


def _order(records: pd.DataFrame, run: RunDir | None) -> tuple[list, list, list]:
    """Model labels, defense labels and (attack, norm) pairs in the plan's order when the run
    directory has a plan.json (else sorted); derived worst-case columns last."""
    models = sorted(records["model"].unique())
    defenses = sorted(records["defense"].unique())
    attacked = records[records["attack"] != CLEAN]
    pairs = sorted(set(zip(attacked["attack"], attacked["norm"])))
    plan = None if run is None else run.read_plan()
    if plan is not None:
        def first(order, items):
            return [i for i in order if i in items] + [i for i in items if i not in order]

        models, defenses = first(plan["models"], models), first(plan["defenses"], defenses)
        pairs = first([tuple(p) for p in plan["attacks"]], pairs)
    pairs = [p for p in pairs if p[0] != WORST] + [p for p in pairs if p[0] == WORST]
    return models, defenses, pairs


WORST = "worst-case"
"""The attack name of derived rows: per example, the worst over all attacks at a norm and ε."""


def worst_case(records: pd.DataFrame, run: RunDir) -> pd.DataFrame:
    """AutoAttack's rule over the sweep's attacks: an example counts as robust at (norm, ε)
    only if every attack run at that norm and ε failed on it. One derived row per
    (model, defense, norm, ε) that two or more attacks share, from the stored masks."""
    attacked = records[(records["attack"] != CLEAN) & (records["attack"] != WORST)]
    rows = []
    for (data, model, defense, norm, eps), g in attacked.groupby(
            ["data", "model", "defense", "norm", "eps"], sort=False):
        if g["attack"].nunique() < 2:
            continue
        mask = np.logical_and.reduce([run.read_mask(c) for c in g["cell_id"]])
        rows.append({**g.iloc[0].to_dict(), "attack": WORST, **accuracy_fields(mask),
                     "seconds": float(g["seconds"].sum()),
                     "compile_seconds": float(g["compile_seconds"].sum()),
                     "cell_id": "+".join(g["cell_id"]),
                     "attack_options": json.dumps(sorted(g["attack"])),
                     "queries_mean": float("nan"), "queries_median": float("nan"), "details": ""})
    return pd.DataFrame(rows, columns=records.columns)


def column_name(attack: str, norm: str, eps: float) -> str:
    return "clean" if attack == CLEAN else f"{attack} {norm} ε={eps:g}"


def accuracy_table(records: pd.DataFrame, run: RunDir | None = None) -> pd.DataFrame:
    """Robust accuracy (%) with rows (model, defense) and columns clean, attack × norm × ε."""
    if records.empty:
        return pd.DataFrame()
    r = records.copy()
    r["column"] = [column_name(a, n, e) for a, n, e in zip(r["attack"], r["norm"], r["eps"])]
    table = r.pivot_table(index=["model", "defense"], columns="column", values="robust_acc",
                          aggfunc="first", sort=False) * 100
    table.columns.name = None
    cols = ["clean"] if "clean" in table.columns else []
    models, defenses, pairs = _order(records, run)
    for attack, norm in pairs:
        g = r[(r["attack"] == attack) & (r["norm"] == norm)].sort_values("eps")
        cols += list(dict.fromkeys(g["column"]))
    index = [(m, d) for m in models for d in defenses if (m, d) in table.index]
    return table.loc[index, cols].round(1)


def latex_table(table: pd.DataFrame, data: str) -> str:
    """A paper-ready LaTeX table (booktabs): attack × norm as grouped headers over ε."""
    groups = [("", "clean") if c == "clean" else (c.rsplit(" ε=", 1)[0], "ε=" + c.rsplit(" ε=", 1)[1])
              for c in table.columns]
    t = table.copy()
    t.columns = pd.MultiIndex.from_tuples(groups)
    t.index.names = ["model", "defense"]
    data = data.replace("\\", "").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%")
    caption = f"Robust accuracy (\\%) on {data}."
    if any(g[0].startswith(WORST) for g in groups):
        caption += " Worst case: an example counts as robust only if every attack at that budget failed."
    latex = t.to_latex(float_format="%.1f", multirow=False, multicolumn=True,
                       multicolumn_format="c", escape=True, caption=caption,
                       label="tab:robust-accuracy")
    return latex.replace("ε", "$\\varepsilon$")


def write_tables(records: pd.DataFrame, run: RunDir) -> list[Path]:
    """Writes tables/robust_accuracy.{csv,md,tex}; returns the paths."""
    table = accuracy_table(records, run)
    run.tables.mkdir(parents=True, exist_ok=True)
    paths = [run.tables / f"robust_accuracy.{ext}" for ext in ("csv", "md", "tex")]
    atomic_write_text(paths[0], table.to_csv())
    atomic_write_text(paths[1], table.reset_index().to_markdown(index=False, floatfmt=".1f") + "\n")
    atomic_write_text(paths[2], latex_table(table, ", ".join(sorted(records["data"].unique()))))
    return paths


def write_plots(records: pd.DataFrame, run: RunDir) -> list[Path]:
    """Writes plots/accuracy_vs_eps_<attack>_<norm>.{png,pdf}; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run.plots.mkdir(parents=True, exist_ok=True)
    paths = []
    models, defenses, pairs = _order(records, run)
    for attack, norm in pairs:
        group = records[(records["attack"] == attack) & (records["norm"] == norm)]
        fig, ax = plt.subplots(figsize=(5.0, 3.6), layout="constrained")
        for m in models:
            for d in defenses:
                g = group[(group["model"] == m) & (group["defense"] == d)].sort_values("eps")
                if g.empty:
                    continue
                line, = ax.plot(g["eps"], 100 * g["robust_acc"], marker="o", ms=3,
                                label=f"{m} / {d}")
                ax.fill_between(g["eps"], 100 * g["ci_low"], 100 * g["ci_high"],
                                color=line.get_color(), alpha=0.15, lw=0)
        data = ", ".join(sorted(group["data"].unique()))
        n = ", ".join(str(v) for v in sorted(group["examples"].unique()))
        ax.set(xlabel=f"ε ({norm})", ylabel="robust accuracy (%)", ylim=(-2, 102))
        ax.set_title(f"{attack} ({norm}) on {data}: {n} test images, 95% CI", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        for ext in ("png", "pdf"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=150, metadata={"CreationDate": None} if ext == "pdf" else None)
            path = run.plots / f"accuracy_vs_eps_{attack}_{norm}.{ext}"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
        plt.close(fig)
    return paths


def write_report(run_dir: str | Path, records: pd.DataFrame | None = None) -> list[Path]:
    """Rebuilds records.csv, tables and plots of a run directory from its cell records."""
    run = RunDir(Path(run_dir))
    if records is None:
        plan = run.read_plan()
        records = run.read_records(only=None if plan is None else set(plan["cells"]))
        atomic_write_text(run.records_csv, records.to_csv(index=False))
    if records.empty:
        from bench.errors import RobustaxError

        raise RobustaxError(f"{run.root} has no finished cells; run `robustax run CONFIG --out "
                            f"{run.root}` first")
    worst = worst_case(records, run)
    if not worst.empty:
        records = pd.concat([records, worst], ignore_index=True)
    return write_tables(records, run) + write_plots(records, run)
