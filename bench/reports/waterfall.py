"""AutoAttack's waterfall: robust accuracy after each stage of a cascade cell.

A cascade cell (AutoAttack) already records, per stage, how many points that stage broke
(``details``: ``misclassified_clean``, ``broken_by`` and the stage order ``stages``; see
:func:`bench.store.records.info_fields`). From those counts, per cell: clean accuracy, then the
robust accuracy left after APGD-CE, after APGD-T, after FAB-T and after Square. The last point
is the cell's own robust accuracy (checked: a cell whose counts do not end there, e.g. a random
model scored over several draws after the cascade ran, gets a ``scored`` column with the
recorded number). Which stage does the work on which defense is then one row to read.

- ``tables/waterfall_<attack>_<norm>.md`` and ``.csv``: rows model × defense × ε, columns
  ``clean`` and one per stage (robust accuracy in %). Cells with another stage sequence (the
  ``rand`` version on random rows) get their own table, ``waterfall_<attack>-<version>_<norm>``.
- ``plots/waterfall_<attack>_<norm>.png`` and ``.pdf``: one line per row over the stages.

Records written before the stage order was stored fall back to the stage names in sorted
order, which is the cascade's order for AutoAttack ``standard`` and ``rand`` (not for ``plus``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.reports import figures
from bench.reports.tables import NORM_TEXT, WORST, Order, markdown_table
from bench.store.io import slug
from bench.store.records import CLEAN, RunDir

SCORED = "scored"
"""The column of a cell's recorded robust accuracy where the stage counts do not end at it."""


def _stages(details: str) -> tuple[tuple[str, ...], dict] | None:
    """(stage order, details) of a cascade cell's details JSON; None for other cells."""
    if not isinstance(details, str) or not details:
        return None
    d = json.loads(details)
    broken = d.get("broken_by")
    if not isinstance(broken, dict) or not broken:
        return None
    order = tuple(d.get("stages") or sorted(broken))
    return order, d


def waterfalls(records: pd.DataFrame, order: Order) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (attack, norm) of the cascade cells, the waterfall table: index model, defense, ε;
    columns ``clean``, each stage, and ``scored`` where a cell's counts do not reach its
    recorded accuracy. Values in %; rows in plan order."""
    attacked = records[(records["attack"] != CLEAN) & (records["attack"] != WORST)
                       & (records["eps"] > 0)]
    rank = {(m, d): i for i, (m, d) in enumerate(
        (m, d) for m in order.models for d in order.defenses)}
    out: dict[tuple[str, str], pd.DataFrame] = {}
    for (attack, norm), g in attacked.groupby(["attack", "norm"], sort=False):
        by_order: dict[tuple[str, ...], list[dict]] = {}
        names: dict[tuple[str, ...], str] = {}
        for r in g.itertuples():
            parsed = _stages(r.details)
            if parsed is None:
                continue
            stages, d = parsed
            n = int(r.examples)
            left = n - int(d.get("misclassified_clean", 0))
            row = {"model": r.model, "defense": r.defense, "eps": float(r.eps),
                   "clean": 100.0 * left / n}
            for s in stages:
                left -= int(d["broken_by"].get(s, 0))
                row[s] = 100.0 * left / n
            if left != int(r.correct):
                row[SCORED] = 100.0 * int(r.correct) / n
            by_order.setdefault(stages, []).append(row)
            names.setdefault(stages, _version(getattr(r, "attack_options", None), stages))
        # One table per stage sequence: AutoAttack's rand version (on random rows) runs other
        # stages than standard, and a column of one is no stage of the other. The first
        # sequence met keeps the attack's name; the others are named by their version.
        for i, (stages, rows) in enumerate(by_order.items()):
            t = pd.DataFrame(rows)
            t["_rank"] = [rank.get((m, d), len(rank)) for m, d in zip(t["model"], t["defense"])]
            t = t.sort_values(["_rank", "eps"], kind="stable").drop(columns="_rank")
            columns = ["clean", *stages] + ([SCORED] if SCORED in t else [])
            name = attack if i == 0 else f"{attack}-{names[stages]}"
            out[name, norm] = t.set_index(["model", "defense", "eps"])[columns]
    return out


def _version(options: object, stages: tuple[str, ...]) -> str:
    """A stage sequence's name: the cell's ``version`` option (AutoAttack's ``rand``), else
    its stages joined."""
    try:
        version = json.loads(options).get("version") if isinstance(options, str) else None
    except (ValueError, AttributeError):
        version = None
    return slug(str(version)) if version else "-".join(stages)


def _text(table: pd.DataFrame) -> str:
    t = table.reset_index()
    t["eps"] = [f"{e:g}" for e in t["eps"]]
    return markdown_table(t.rename(columns={"eps": "ε"}).set_index(["model", "defense", "ε"]))


def markdown(attack: str, norm: str, table: pd.DataFrame, data: str, n: int) -> str:
    """A waterfall table as a Markdown section."""
    stages = [c for c in table.columns if c not in ("clean", SCORED)]
    note = (f" `{SCORED}`: the cell's recorded accuracy where it is below the last stage's "
            "(the model was scored again after the cascade)." if SCORED in table else "")
    return (f"### {attack} ({NORM_TEXT.get(norm, norm)}) stage by stage\n\n{data}, {n} test "
            f"images, robust accuracy (%) after each stage of the cascade, each stage run on "
            f"the points every earlier one left robust: clean → {' → '.join(stages)}.{note}\n\n"
            f"{_text(table)}\n")


def write(records: pd.DataFrame, run: RunDir, order: Order) -> tuple[dict[str, str], list]:
    """The waterfall files: ({tables/ file name: text}, [plot paths]). The caller stores the
    table texts with the other tables (and removes stale ones)."""
    tables = waterfalls(records, order)
    if not tables:
        return {}, []
    data = ", ".join(sorted(records["data"].unique()))
    n = int(records["examples"].max())
    files, paths = {}, []
    for (attack, norm), t in tables.items():
        stem = f"waterfall_{slug(attack)}_{norm}"
        files[f"{stem}.md"] = markdown(attack, norm, t, data, n)
        files[f"{stem}.csv"] = t.to_csv(float_format="%.4g")
        paths += _plot(run, stem, attack, norm, t, data, n)
    return files, paths


def _plot(run: RunDir, stem: str, attack: str, norm: str, table: pd.DataFrame, data: str,
          n: int) -> list[Path]:
    plt = figures._plt()
    stages = [c for c in table.columns if c != SCORED]
    rows = list(dict.fromkeys((m, d) for m, d, _ in table.index))
    style = figures._styles(rows)
    many_eps = table.index.get_level_values("eps").nunique() > 1
    big = len(table) > 8
    fig, ax = plt.subplots(figsize=(8.4, 4.4) if big else (6.0, 3.9), layout="constrained")
    markers = "osD^v<>p*h"
    eps_all = sorted(table.index.get_level_values("eps").unique())
    for (m, d, e), values in table.iterrows():
        color, ls = style[m, d]
        label = f"{m} / {d}" + (f", ε = {e:g}" if many_eps else "")
        ax.plot(range(len(stages)), values[stages].to_numpy(float), color=color, ls=ls,
                marker=markers[eps_all.index(e) % len(markers)], ms=4, lw=1.4, label=label)
    ax.set_xticks(range(len(stages)), stages, fontsize=8)
    ax.set(ylabel="robust accuracy (%)", ylim=(-2, 102))
    ax.grid(alpha=0.3)
    eps_text = ", ".join(f"{e:g}" for e in eps_all)
    ax.set_title(f"{attack} ({NORM_TEXT.get(norm, norm)}, ε = {eps_text}) on {data}, {n} test "
                 f"images:\nrobust accuracy left after each stage of the cascade", fontsize=9)
    if big:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(fontsize=7)
    paths = figures.save(fig, run, stem)
    plt.close(fig)
    return paths
