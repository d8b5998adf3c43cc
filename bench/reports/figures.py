"""Robustness curves over the attack's budget and a model × defense heatmap.

- ``plots/accuracy_vs_steps_<attack>_<norm>.{png,pdf}``: robust accuracy after k of the K steps
  of an iterative attack, one panel per ε, one line per model × defense, from the one run the
  sweep made (each example's first fooling step is recorded; nothing is re-attacked). The step
  size is the K-step schedule's throughout, so the curve is "the K-step attack stopped early",
  not a separate k-step attack.
- ``plots/accuracy_vs_queries_<attack>_<norm>.{png,pdf}``: the same over Square's queries.
- ``plots/heatmap_<norm>.{png,pdf}``: robust accuracy of every model × defense (rows) against
  every attack of the norm and their per-example worst case (columns) at one ε.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import quiet
from bench.reports import checklist
from bench.reports.tables import NORM_TEXT, WORST, Order
from bench.store.records import CLEAN, RunDir


def save(fig, run: RunDir, stem: str) -> list[Path]:
    """``plots/<stem>.png`` and ``.pdf`` of a figure (drawn with third-party warnings
    silenced); returns the paths."""
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        with quiet("matplotlib"):  # missing glyphs of unusual labels, layout notes: not ours
            fig.savefig(buf, format=ext, dpi=150,
                        metadata={"CreationDate": None} if ext == "pdf" else None)
        path = run.plots / f"{stem}.{ext}"
        run.store(path, buf.getvalue())
        paths.append(path)
    return paths


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _styles(rows: list[tuple[str, str]]) -> dict:
    """A colour per naive row (adaptive rows dashed in their naive row's colour)."""
    plt = _plt()
    naive = list(dict.fromkeys((m, d.removesuffix(" (adaptive)")) for m, d in rows))
    colors = plt.get_cmap("tab20" if len(naive) > 10 else "tab10").colors
    return {(m, d): (colors[naive.index((m, d.removesuffix(" (adaptive)"))) % len(colors)],
                     "--" if d.endswith(" (adaptive)") else "-") for m, d in rows}


def write_budget_plots(records: pd.DataFrame, run: RunDir, order: Order) -> list[Path]:
    """Accuracy vs steps / queries per (attack, norm) whose cells carry a per-example record."""

    plt = _plt()
    r = checklist._Run(run, records)
    models, defenses, pairs = order.models, order.defenses, order.all_pairs
    paths = []
    for attack, norm in pairs:
        if attack == WORST:
            continue
        cells = r.attacked[(r.attacked["attack"] == attack) & (r.attacked["norm"] == norm)
                           & (r.attacked["eps"] > 0)]
        curves: dict = {}
        kind = None
        for _, row in cells.iterrows():
            c = checklist.curve_of(r, row)
            if c is None:
                continue
            kind = c[0]
            curves.setdefault(row["eps"], {})[row["model"], row["defense"]] = c[1:]
        if not curves:
            continue
        eps = sorted(curves)
        rows = [(m, d) for m in models for d in defenses if any((m, d) in curves[e] for e in eps)]
        style = _styles(rows)
        ncols = min(3, len(eps))
        nrows = math.ceil(len(eps) / ncols)
        big = len(rows) > 8
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols + (2.4 if big else 0),
                                                        2.7 * nrows + 0.5),
                                 sharey=True, squeeze=False, layout="constrained")
        for ax, e in zip(axes.flat, eps):
            for m, d in rows:
                if (m, d) not in curves[e]:
                    continue
                t, acc = curves[e][m, d]
                color, ls = style[m, d]
                if kind == "queries":  # log axis: from the first query (q = 0 is clean)
                    ax.plot(t[1:], acc[1:], color=color, ls=ls, lw=1.4, label=f"{m} / {d}")
                else:
                    ax.plot(t, acc, color=color, ls=ls, lw=1.4, marker="o", ms=2.5,
                            label=f"{m} / {d}")
            if kind == "queries":
                ax.set_xscale("log")
            ax.set_title(f"ε = {e:g}", fontsize=9)
            ax.set_xlabel("queries" if kind == "queries" else "steps", fontsize=8)
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        for ax in axes.flat[len(eps):]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel("robust accuracy (%)", fontsize=8)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if big or len(eps) % ncols == 0:
            fig.legend(handles, labels, fontsize=7, loc="outside right center", frameon=False)
        else:
            axes.flat[len(eps)].legend(handles, labels, fontsize=8, loc="center", frameon=False)
        if kind == "steps":
            from matplotlib.ticker import MaxNLocator

            for ax in axes.flat[:len(eps)]:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        budget = int(max(t[-1] for e in eps for t, _ in curves[e].values()))
        data = ", ".join(sorted(cells["data"].unique()))
        what = (f"after k of its {budget} steps" if kind == "steps"
                else f"after q of its {budget:,} queries")
        fig.suptitle(f"{attack} ({NORM_TEXT.get(norm, norm)}) on {data}: robust accuracy {what}"
                     f" (one run, each example's first success)", fontsize=9)
        paths += save(fig, run, f"accuracy_vs_{kind}_{attack}_{norm}")
        plt.close(fig)
    return paths


def heatmap_eps(records: pd.DataFrame, norm: str) -> float | None:
    """The ε of a norm's heatmap: among budgets > 0, the one the most attacks ran at; on a tie
    the one whose worst accuracy over rows is nearest 50% (the most telling column)."""
    a = records[(records["norm"] == norm) & (records["eps"] > 0)
                & (records["attack"] != CLEAN) & (records["attack"] != WORST)]
    if a.empty:
        return None
    counts = a.groupby("eps")["attack"].nunique()
    best = counts[counts == counts.max()].index
    spread = {e: abs(a[a["eps"] == e]["robust_acc"].median() - 0.5) for e in best}
    return float(min(best, key=lambda e: (spread[e], e)))


def write_heatmaps(records: pd.DataFrame, run: RunDir, order: Order) -> list[Path]:
    """plots/heatmap_<norm>.{png,pdf}: rows model × defense, columns attacks (and their
    per-example worst case), at the ε of :func:`heatmap_eps`."""

    plt = _plt()
    models, defenses, pairs = order.models, order.defenses, order.all_pairs
    paths = []
    for norm in order.norms:  # corruptions: plots/accuracy_vs_severity (bench.reports.corruptions)
        e = heatmap_eps(records, norm)
        if e is None:
            continue
        attacks = [a for a, n in pairs if n == norm and a != WORST]
        cols = attacks + ([WORST] if len(attacks) > 1 else [])
        at = records[(records["norm"] == norm) & np.isclose(records["eps"], e)]
        clean = records[records["attack"] == CLEAN]
        rows = [(m, d) for m in models for d in defenses
                if ((at["model"] == m) & (at["defense"] == d)).any()]
        if not rows:
            continue
        values = np.full((len(rows), len(cols) + 1), np.nan)
        for i, (m, d) in enumerate(rows):
            c = clean[(clean["model"] == m) & (clean["defense"] == d)]["robust_acc"]
            values[i, 0] = 100 * c.iloc[0] if len(c) else np.nan
            for j, a in enumerate(cols, 1):
                v = at[(at["model"] == m) & (at["defense"] == d) & (at["attack"] == a)]
                if len(v):
                    values[i, j] = 100 * v["robust_acc"].iloc[0]
        labels = ["clean"] + cols
        fig, ax = plt.subplots(figsize=(1.0 + 0.95 * len(labels) + 1.6,
                                        0.9 + 0.32 * len(rows)), layout="constrained")
        im = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                v = values[i, j]
                ax.text(j, i, "–" if np.isnan(v) else f"{v:.1f}", ha="center", va="center",
                        fontsize=7.5, color="black" if not np.isnan(v) and v > 60 else "white")
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20, ha="right")
        ax.set_yticks(range(len(rows)), [f"{m} / {d}" for m, d in rows], fontsize=8)
        ax.axvline(0.5, color="white", lw=2)
        if len(attacks) > 1:
            ax.axvline(len(labels) - 1.5, color="white", lw=2)
        data = ", ".join(sorted(records["data"].unique()))
        ax.set_title(f"Robust accuracy (%) on {data}, {NORM_TEXT.get(norm, norm)} ε = {e:g}",
                     fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
        paths += save(fig, run, f"heatmap_{norm}")
        plt.close(fig)
    return paths
