"""Common-corruption accuracy (the ``severity`` threat model, ``attacks.corruption``).

Corruptions are averaged, not worst-cased: RobustBench's headline number for its corruptions
threat model is the accuracy averaged over the 15 corruptions and severities 1..5 (Hendrycks &
Dietterich 2019); the per-example worst case over corruptions is a different, much harsher
quantity and is not reported. Severity 0 is the clean image and is shown as ``clean``.

- ``tables/corruptions.md``: per model × defense, clean accuracy, the mean over corruptions at
  each severity, and the mean over corruptions and severities ("mean"); then per corruption,
  the mean over its severities; corruptions skipped by the sweep are named with the reason.
- ``tables/robust_accuracy_corruptions.csv``: long form, one row per model, defense,
  corruption and severity (and ``mean`` rows over severities).
- ``plots/accuracy_vs_severity.{png,pdf}``: accuracy against severity, one panel per
  model × defense, one line per corruption, the mean in black.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench.reports import figures
from bench.reports.tables import CORRUPTION, Order, markdown_table, shorten
from bench.store.records import CLEAN, RunDir

MEAN = "mean"


def _kind(options: str, label: str) -> str:
    try:
        return json.loads(options).get("kind", label)
    except (json.JSONDecodeError, TypeError, AttributeError):
        return label


def long_form(records: pd.DataFrame, order: Order) -> pd.DataFrame:
    """One row per (model, defense, corruption, severity ≥ 1): accuracy and interval (%)."""
    c = records[(records["norm"] == CORRUPTION) & (records["eps"] > 0)]
    if c.empty:
        return pd.DataFrame(columns=["model", "defense", "corruption", "severity", "accuracy",
                                     "ci_low", "ci_high", "examples"])
    rank = {a: i for i, a in enumerate(order.attacks(CORRUPTION))}
    out = pd.DataFrame({
        "model": c["model"], "defense": c["defense"],
        "corruption": [_kind(o, a) for o, a in zip(c["attack_options"], c["attack"])],
        "severity": c["eps"].astype(int), "accuracy": 100 * c["robust_acc"],
        "ci_low": 100 * c["ci_low"], "ci_high": 100 * c["ci_high"], "examples": c["examples"],
        "_rank": [rank.get(a, len(rank)) for a in c["attack"]]})
    rows = {r: i for i, r in enumerate(order.rows(pd.MultiIndex.from_frame(out[["model",
                                                                             "defense"]])))}
    out["_row"] = [rows.get((m, d), len(rows)) for m, d in zip(out["model"], out["defense"])]
    return out.sort_values(["_row", "_rank", "severity"]).drop(columns=["_rank", "_row"]) \
        .reset_index(drop=True)


def kinds(long: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(long["corruption"]))


def _clean(records: pd.DataFrame) -> pd.Series:
    c = records[records["attack"] == CLEAN]
    return pd.Series(100 * c["robust_acc"].values,
                     index=pd.MultiIndex.from_arrays([c["model"], c["defense"]]))


def severity_table(records: pd.DataFrame, order: Order) -> pd.DataFrame:
    """Rows model × defense; columns clean, severity 1..5 (mean over corruptions) and mean
    (over corruptions and severities: RobustBench's corruption accuracy)."""
    long = long_form(records, order)
    if long.empty:
        return pd.DataFrame()
    by_sev = long.pivot_table(index=["model", "defense"], columns="severity", values="accuracy",
                              aggfunc="mean")
    by_sev.columns = [str(int(s)) for s in by_sev.columns]
    by_sev[MEAN] = long.groupby(["model", "defense"])["accuracy"].mean()
    by_sev.insert(0, "clean", _clean(records).reindex(by_sev.index))
    return by_sev.loc[order.rows(by_sev.index)]


def kind_table(records: pd.DataFrame, order: Order) -> pd.DataFrame:
    """Rows model × defense; a column per corruption (mean over its severities) and mean."""
    long = long_form(records, order)
    if long.empty:
        return pd.DataFrame()
    t = long.pivot_table(index=["model", "defense"], columns="corruption", values="accuracy",
                         aggfunc="mean")[kinds(long)]
    t[MEAN] = long.groupby(["model", "defense"])["accuracy"].mean()
    return t.loc[order.rows(t.index)]


def csv(records: pd.DataFrame, order: Order) -> str:
    """``robust_accuracy_corruptions.csv``: the long form plus per-corruption ``mean`` rows
    (severity ``mean``) and per-row ``mean`` rows (corruption ``mean``)."""
    long = long_form(records, order)
    long["severity"] = long["severity"].astype(str)
    means = long.groupby(["model", "defense", "corruption"], sort=False)["accuracy"].mean()
    per_kind = means.reset_index().assign(severity=MEAN)
    overall = long.groupby(["model", "defense"], sort=False)["accuracy"].mean().reset_index() \
        .assign(corruption=MEAN, severity=MEAN)
    return pd.concat([long, per_kind, overall], ignore_index=True).round(4).to_csv(index=False)


def skipped(records: pd.DataFrame) -> dict[str, str]:
    """Corruptions a sweep skipped, with the reason (the cells' ``details.skipped``), less
    those the records hold cells of: a cell computed before a corruption was ported keeps
    the note, and a resumed run adds the new corruption's cells beside it."""
    out: dict[str, str] = {}
    c = records[records["norm"] == CORRUPTION]
    for d in c.get("details", pd.Series(dtype=str)):
        try:
            out.update(json.loads(d).get("skipped", {}) if d else {})
        except (json.JSONDecodeError, TypeError, AttributeError):
            continue
    ran = {_kind(o, a) for o, a in zip(c.get("attack_options", c["attack"]), c["attack"])}
    return {k: why for k, why in out.items() if k not in ran}


def _fmt(t: pd.DataFrame) -> pd.DataFrame:
    return t.map(lambda v: "–" if pd.isna(v) else f"{v:.1f}")


def _by_kind(t: pd.DataFrame) -> pd.DataFrame:
    """The per-corruption table turned: a row per corruption, a column per model / defense."""
    out = _fmt(t).T
    out.columns = [f"{m} / {d}" for m, d in t.index]
    out.index.name = "corruption"
    return out


def markdown(records: pd.DataFrame, order: Order, heading: str = "##") -> str:
    """The tables of ``tables/corruptions.md`` (and of report.md's corruption section)."""
    long = long_form(records, order)
    if long.empty:
        return ""
    n = ", ".join(f"{v:,}" for v in sorted(long["examples"].unique()))
    data = ", ".join(sorted(records["data"].unique()))
    k = len(kinds(long))
    parts = [f"{heading} Mean corruption accuracy (%)\n",
             f"{data}, {n} test images, {k} corruption{'s' if k != 1 else ''} applied on the "
             f"fly (`attacks/corruption.py`). Columns 1–5: accuracy at that severity averaged "
             f"over the corruptions; **mean**: averaged over corruptions and severities 1–5 "
             f"(RobustBench's corruption accuracy). Corruptions are averaged, not worst-cased.\n",
             markdown_table(_fmt(severity_table(records, order))) + "\n",
             f"{heading} Per corruption: mean over severities 1–5 (%)\n",
             markdown_table(_by_kind(kind_table(records, order))) + "\n"]
    skip = skipped(records)
    if skip:
        parts.append("Skipped: " + "; ".join(f"`{k}` ({why})" for k, why in skip.items())
                     + ".\n")
    return "\n".join(parts)


def terminal_block(records: pd.DataFrame, order: Order, width: int) -> str:
    """The terminal summary's corruption block: mean over corruptions per severity and mean."""
    t = severity_table(records, order)
    if t.empty:
        return ""
    header = ["model", "defense", *t.columns]
    rows = [[shorten(m, 16), shorten(d, 20), *("–" if pd.isna(v) else f"{v:.1f}" for v in vals)]
            for (m, d), vals in zip(t.index, t.values)]
    k = len(kinds(long_form(records, order)))
    title = textwrap.shorten(f"Corruptions: accuracy averaged over {k} corruptions per severity; "
                             f"mean over severities 1-5 (per corruption: tables/corruptions.md)",
                             width, placeholder="…")
    return title + "\n" + tabulate(rows, header, tablefmt="simple", disable_numparse=True,
                                   colalign=("left", "left") + ("right",) * len(t.columns))


def write(records: pd.DataFrame, order: Order) -> dict[str, str]:
    """{file name in tables/: text} (empty without corruption cells)."""
    md = markdown(records, order)
    if not md:
        return {}
    return {"corruptions.md": "# Common corruptions\n\n" + md,
            "robust_accuracy_corruptions.csv": csv(records, order)}


def plot(records: pd.DataFrame, run: RunDir, order: Order) -> list[Path]:
    """``plots/accuracy_vs_severity.{png,pdf}``: one panel per model × defense, accuracy
    against severity (0 = clean) per corruption, the mean over corruptions in black."""
    long = long_form(records, order)
    if long.empty:
        return []
    plt = figures._plt()
    rows = order.rows(pd.MultiIndex.from_frame(long[["model", "defense"]].drop_duplicates()))
    clean = _clean(records)
    ks = kinds(long)
    cols = min(len(rows), 3)
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols + 2.2, 3.0 * nrows),
                             squeeze=False, sharey=True, layout="constrained")
    colors = plt.get_cmap("tab20").colors
    for i, (m, d) in enumerate(rows):
        ax = axes[i // cols][i % cols]
        g = long[(long["model"] == m) & (long["defense"] == d)]
        c0 = clean.get((m, d), np.nan)
        for j, k in enumerate(ks):
            gk = g[g["corruption"] == k].sort_values("severity")
            ax.plot([0, *gk["severity"]], [c0, *gk["accuracy"]], marker="o", ms=2.5, lw=1,
                    color=colors[j % len(colors)], label=k)
        mean = g.groupby("severity")["accuracy"].mean()
        ax.plot([0, *mean.index], [c0, *mean.values], color="black", lw=2.2, marker="o", ms=3,
                label=f"mean ({g['accuracy'].mean():.1f}% over 1–5)")
        ax.set_title(f"{m} / {d}", fontsize=9)
        ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"], fontsize=8)
        ax.set(xlabel="severity", ylim=(-2, 102))
        if i % cols == 0:
            ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for j in range(len(rows), nrows * cols):
        axes[j // cols][j % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles[:-1] + [plt.Line2D([], [], color="black", lw=2.2)],
               labels[:-1] + ["mean over corruptions"], fontsize=7, loc="outside right upper",
               frameon=False)
    data = ", ".join(sorted(records["data"].unique()))
    n = ", ".join(str(v) for v in sorted(long["examples"].unique()))
    fig.suptitle(f"Common corruptions on {data} ({n} test images): accuracy vs severity",
                 fontsize=10)
    paths = figures.save(fig, run, "accuracy_vs_severity")
    plt.close(fig)
    return paths
