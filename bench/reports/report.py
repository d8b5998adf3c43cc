"""Tables and plots from records: what goes into a paper.

The run directory's finished cells, in the order of its plan.json, become (see
:mod:`bench.reports.tables`): a summary that fits a 100-column terminal (``tables/summary.txt``, printed
by ``robustax run`` and ``robustax report``); one Markdown table per attack × norm and per norm
for the per-example worst case over the attacks that share a norm and ε (AutoAttack's rule, from
the stored masks), each in its own file and all together in ``robust_accuracy.md``; one booktabs
LaTeX table per norm (``robust_accuracy_<norm>.tex``; ``robust_accuracy.tex`` holds them all);
and the wide ``robust_accuracy.csv``. ε = 0 is shown once, as clean, after checking per example
that every attack's ε = 0 cell equals it. Plots: accuracy vs ε per attack and norm, one line per
model × defense with its 95% interval shaded, as PNG and PDF. Common corruptions (norm
``severity``) get their own mean tables and severity plot (:mod:`bench.reports.corruptions`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import RobustaxError, warn
from bench.reports import checklist, corruptions, document, figures, poisoning, tables, waterfall
from bench.reports.tables import WORST
from bench.store.io import slug
from bench.store.records import CLEAN, RunDir, accuracy_fields, run_lock

SUMMARY_WIDTH = 100
"""Columns of tables/summary.txt (the terminal summary as written to the run directory)."""


def table_order(records: pd.DataFrame, run: RunDir) -> tables.Order:
    """The order of every table and plot of a run directory: its plan's (plan.json)."""
    return tables.Order.of(records, run.read_plan())


def worst_case(records: pd.DataFrame, run: RunDir) -> pd.DataFrame:
    """AutoAttack's rule over the sweep's attacks: an example counts as robust at (norm, ε)
    only if every attack run at that norm and ε failed on it. One derived row per
    (model, defense, norm, ε) that two or more attacks share, from the stored masks."""
    attacked = records[(records["attack"] != CLEAN) & (records["attack"] != WORST)
                       & (records["norm"] != tables.CORRUPTION)]  # corruptions are averaged
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


_TABLE_FILES = ("robust_accuracy*.csv", "robust_accuracy*.md", "robust_accuracy*.tex",
                "waterfall_*.md", "waterfall_*.csv", "poisoning*.md", "poisoning.csv",
                "corruptions.md",
                "summary.txt")


def write_tables(records: pd.DataFrame, run: RunDir, order: tables.Order,
                 intervals: str | None = "footnote") -> list[Path]:
    """Writes tables/: summary.txt, robust_accuracy.{csv,md,tex}, one Markdown file per
    attack × norm (and per norm's worst case), one LaTeX file per norm, AutoAttack's waterfall
    per cascade attack × norm (table and plot, :mod:`bench.reports.waterfall`), a poisoned row's
    difference from its model's standard row (:mod:`bench.reports.poisoning`); removes the
    table files of an earlier grid that this one no longer has. ``records`` includes the
    worst-case rows. Returns the paths."""
    run.tables.mkdir(parents=True, exist_ok=True)
    files = {"summary.txt": _summary(records, order, SUMMARY_WIDTH),
             "robust_accuracy.csv": tables.wide_table(records, order).to_csv()}
    sections = tables.markdown_sections(records, order)
    files["robust_accuracy.md"] = tables.markdown_index(records, order, sections)
    files.update({f"{stem}.md": body for _, stem, body in sections})
    latex = {norm: tables.latex_norm(records, order, norm, intervals) for norm in order.norms
             if not tables.norm_table(records, order, norm).drop(columns="clean").empty}
    files["robust_accuracy.tex"] = "\n".join(latex.values())
    files.update({f"robust_accuracy_{norm}.tex": tex for norm, tex in latex.items()})
    stage_files, paths = waterfall.write(records, run, order)
    files.update(stage_files)
    files.update(poisoning.write(records, order))
    files.update(corruptions.write(records, order))
    for name, text in files.items():
        run.store_text(run.tables / name, text)
        paths.append(run.tables / name)
    for pattern in _TABLE_FILES:
        for stale in run.tables.glob(pattern):
            if stale.name not in files:
                run.remove(stale)
    return paths


def write_plots(records: pd.DataFrame, run: RunDir, order: tables.Order) -> list[Path]:
    """Writes plots/accuracy_vs_eps_<attack>_<norm>.{png,pdf}; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run.plots.mkdir(parents=True, exist_ok=True)
    paths = []
    models, defenses = order.models, order.defenses
    paths += corruptions.plot(records, run, order)
    for attack, norm in order.all_pairs:
        if norm == tables.CORRUPTION:  # one plot of them all: plots/accuracy_vs_severity
            continue
        group = records[(records["attack"] == attack) & (records["norm"] == norm)]
        curves = {(m, d): g.sort_values("eps") for m in models for d in defenses
                  if not (g := group[(group["model"] == m) & (group["defense"] == d)]).empty}
        # Many rows (a defense sweep): 20 colours, adaptive rows dashed in their naive row's
        # colour, the legend beside the axes instead of over the lines.
        big = len(curves) > 8
        colors = plt.get_cmap("tab20").colors if big else [None] * len(curves)
        fig, ax = plt.subplots(figsize=(8.2, 4.2) if big else (5.0, 3.6), layout="constrained")
        color_of: dict = {}
        for (m, d), g in curves.items():
            adaptive = d.endswith(" (adaptive)")
            naive = (m, d[: -len(" (adaptive)")]) if adaptive else (m, d)
            if naive not in color_of:
                color_of[naive] = colors[len(color_of) % len(colors)]
            line, = ax.plot(g["eps"], 100 * g["robust_acc"], marker="o", ms=3,
                            label=f"{m} / {d}", color=color_of[naive],
                            ls="--" if adaptive else "-")
            ax.fill_between(g["eps"], 100 * g["ci_low"], 100 * g["ci_high"],
                            color=line.get_color(), alpha=0.15, lw=0)
        data = ", ".join(sorted(group["data"].unique()))
        n = ", ".join(str(v) for v in sorted(group["examples"].unique()))
        ax.set(xlabel=f"ε ({norm})", ylabel="robust accuracy (%)", ylim=(-2, 102))
        ax.set_title(f"{attack} ({norm}) on {data}: {n} test images, 95% CI", fontsize=9)
        ax.grid(alpha=0.3)
        if big:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        else:
            ax.legend(fontsize=8)
        paths += figures.save(fig, run, f"accuracy_vs_eps_{slug(attack)}_{norm}")
        plt.close(fig)
    return paths


def report_records(run: RunDir, records: pd.DataFrame | None = None,
                   write_csv: bool = False) -> pd.DataFrame:
    """The current grid's records (read from cells/ unless given) with the worst-case rows,
    after the ε = 0 check."""
    if records is None:
        plan = run.read_plan()
        records = run.read_records(only=None if plan is None else set(plan["cells"]))
        if plan is not None and "run" in plan and not records.empty:
            records["run"] = plan["run"]  # the grid of the config last run here: one run name
        if write_csv:
            run.store_text(run.records_csv, records.to_csv(index=False))
    if records.empty:
        raise RobustaxError(f"{run.root} has no finished cells; run `robustax run CONFIG --out "
                            f"{run.root}` first")
    tables.check_eps_zero(records, run.read_mask)
    worst = worst_case(records, run)
    return pd.concat([records, worst], ignore_index=True) if not worst.empty else records


def write_report(run_dir: str | Path, records: pd.DataFrame | None = None,
                 baseline: str | Path | None = None, gate: dict | None = None) -> list[Path]:
    """Rebuilds records.csv, tables and plots of a run directory from its cell records, then
    the checklist and report.md (:mod:`bench.reports.document`; with ``baseline``, the regression
    verdict against that run, with the gate's options ``gate``: ``tolerance``, ``alpha``,
    ``fail_on``, ``by``, as :func:`bench.reports.compare.compare_runs` takes them)."""

    run = RunDir(Path(run_dir))
    with run_lock(run.root, "report"):
        run.adopt()
        records = report_records(run, records, write_csv=records is None)
        for problem in run.damaged_checkpoints():
            warn(problem)
        order = table_order(records, run)
        paths = write_tables(records, run, order) + write_plots(records, run, order)
        return paths + document.write_all(records, run, order, paths, baseline, gate)[0]


def checklist_text(run_dir: str | Path) -> str:
    """The checklist as printed by ``robustax run`` and ``report`` (from checklist.json)."""

    path = Path(run_dir) / "checklist.json"
    items = [checklist.Item(**i) for i in json.loads(path.read_text())]
    return checklist.terminal(items)


def summary(run_dir: str | Path, width: int = SUMMARY_WIDTH) -> str:
    """The terminal summary of a run directory (see :func:`bench.reports.tables.terminal_summary`),
    ``width`` columns wide."""
    run = RunDir(Path(run_dir))
    records = report_records(run)
    return _summary(records, table_order(records, run), width, where=str(run.tables))


def _summary(records: pd.DataFrame, order: tables.Order, width: int,
             where: str | None = None) -> str:
    """The terminal summary: the norms' blocks and, if the grid has corruptions, their means."""
    return tables.terminal_summary(records, order, width, where,
                                   extra=corruptions.terminal_block(records, order, width))
