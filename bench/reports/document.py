"""report.md: one page a paper can cite from (written by ``robustax report`` and ``run``).

Config and environment as run, the robust-accuracy tables with exact 95% intervals, every
plot, the sanity checklist (:mod:`bench.reports.checklist`) and, given a baseline run, the regression
verdict (:mod:`bench.reports.compare`). Beside it: ``tables/intervals_<norm>.tex``, booktabs tables
whose cells carry their Clopper–Pearson interval.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.reports import checklist, compare, corruptions, figures, poisoning, tables, waterfall
from bench.store.records import RunDir

INTERVAL_EPS = 4
"""ε columns per interval LaTeX table (more are split into parts)."""


def _environment(run: RunDir) -> str:
    path = run.root / "environment.json"
    try:
        envs = json.loads(path.read_text()) if path.is_file() else []
    except json.JSONDecodeError:
        envs = []
    if not envs:
        return "No environment.json in this run directory.\n"
    env = envs[-1]
    rows = [("started", env.get("started", "")), ("code version", env.get("code_version", "")),
            ("python", env.get("python", "")), ("platform", env.get("platform", "")),
            ("backend / devices", f"{env.get('backend', '')}: "
                                  f"{', '.join(env.get('devices', []))}"),
            ("CPU count", env.get("cpu_count", "")), ("XLA_FLAGS", env.get("XLA_FLAGS", ""))]
    rows += [(k, v) for k, v in sorted(env.get("packages", {}).items()) if v]
    text = pd.DataFrame(rows, columns=["", "value"]).to_markdown(index=False)
    if len(envs) > 1:
        text += (f"\n\nThe last of {len(envs)} invocations into this directory; "
                 f"environment.json lists them all.")
    return text + "\n"


def _interval_table(records: pd.DataFrame, order: tables.Order, norm: str) -> str:
    """A norm's strongest-evaluation table, each cell ``acc [low, high]`` (exact 95%)."""
    values = tables.norm_table(records, order, norm)
    low = tables.norm_table(records, order, norm, "ci_low")
    high = tables.norm_table(records, order, norm, "ci_high")
    text = values.copy().astype(object)
    for c in values.columns:
        text[c] = [("–" if pd.isna(v) else f"{v:.1f} [{lo:.1f}, {hi:.1f}]")
                   for v, lo, hi in zip(values[c], low[c], high[c])]
    text = text.reset_index()
    text.columns = [c if isinstance(c, str) else f"ε={c:g}" for c in text.columns]
    return text.to_markdown(index=False, disable_numparse=True)


def write_interval_latex(records: pd.DataFrame, run: RunDir, order: tables.Order) -> list[Path]:
    """tables/intervals_<norm>.tex: the per-norm booktabs tables, cells with their interval."""
    paths = []
    for norm in order.norms:
        if tables.norm_table(records, order, norm).drop(columns="clean").empty:
            continue
        # An interval triples a cell's width: at most 4 ε columns per table (a page's width)
        tex = tables.latex_norm(records, order, norm, intervals="ci", max_eps=INTERVAL_EPS)
        tex = tex.replace(f"tab:robust-accuracy-{norm}", f"tab:robust-accuracy-ci-{norm}")
        path = run.tables / f"intervals_{norm}.tex"
        run.store_text(path, tex)
        paths.append(path)
    return paths


def _plots_section(run: RunDir, plot_paths: list[Path]) -> str:
    pngs = [p for p in plot_paths if p.suffix == ".png"]
    groups = (("Robust accuracy vs ε (95% intervals shaded)", "accuracy_vs_eps_"),
              ("Robust accuracy vs attack steps (one run)", "accuracy_vs_steps_"),
              ("Robust accuracy vs queries (one run)", "accuracy_vs_queries_"),
              ("Model × defense against every attack at one ε", "heatmap_"),
              ("AutoAttack stage by stage", "waterfall_"))
    parts = []
    for title, prefix in groups:
        shown = [p for p in pngs if p.name.startswith(prefix)]
        if not shown:
            continue
        parts.append(f"### {title}\n")
        parts += [f"![{p.stem}](plots/{p.name})\n" for p in shown]
    if not parts:
        return "No plots.\n"
    return "\n".join(parts)


def write(records: pd.DataFrame, run: RunDir, order: tables.Order, plot_paths: list[Path],
          items: list[checklist.Item], baseline: str | Path | None = None,
          gate: dict | None = None) -> list[Path]:
    """report.md (and, with a baseline, the compare files in ``compare/``; ``gate``: the
    options of :func:`bench.reports.compare.compare_runs`)."""
    data, n = tables._describe(records)
    config = (run.root / "config.toml")
    name = run.root.name
    cfg_json = run.root / "config.json"
    config_id = ""
    if cfg_json.is_file():
        try:
            state = json.loads(cfg_json.read_text())
            name, config_id = state.get("config", {}).get("name", name), state.get("config_id", "")
        except json.JSONDecodeError:
            pass
    parts = [f"# robustax report: {name}\n",
             f"{data}, {n} test images; "
             f"{int((records['attack'] != tables.WORST).sum())} cells"
             + (f"; config id `{config_id}`" if config_id else "") + ". Generated by "
             "`robustax report` from the cells, masks and records in this directory.\n"]
    statuses = {i.status for i in items}
    parts.append("**Checklist:** " + ", ".join(f"{i.key} {i.status}" for i in items)
                 + (" (see below before citing a number)." if "WARN" in statuses else ".")
                 + "\n")
    paths = []
    if baseline is not None:
        table = compare.compare_runs(baseline, run.root, **(gate or {}))
        paths += compare.write(table, run.root / "compare")
        parts.append(f"**Regression check against `{baseline}`:** {compare.verdict(table)} "
                     f"Details: [compare/compare.md](compare/compare.md).\n")
    parts.append("## Config\n")
    if config.is_file():
        parts.append("```toml\n" + config.read_text().rstrip() + "\n```\n")
    else:
        parts.append("No config.toml in this run directory (see config.json).\n")
    parts += ["## Environment\n", _environment(run)]
    parts.append("## Robust accuracy (%) with exact 95% intervals\n")
    parts.append("Per norm, rows model × defense, columns clean and ε: at each ε the per-example "
                 "worst case over the attacks run there (one attack: its cell), with its "
                 "Clopper–Pearson interval. Per-attack tables: [tables/robust_accuracy.md]"
                 "(tables/robust_accuracy.md); LaTeX: `tables/robust_accuracy_<norm>.tex`, "
                 "and with intervals in every cell `tables/intervals_<norm>.tex`.\n")
    for norm in order.norms:
        if tables.norm_table(records, order, norm).drop(columns="clean").empty:
            continue
        attacks = order.attacks(norm)
        parts.append(f"### {tables.NORM_TEXT.get(norm, norm)}: "
                     f"{'worst case over ' if len(attacks) > 1 else ''}{', '.join(attacks)}\n")
        parts.append(_interval_table(records, order, norm) + "\n")
    corrupted = corruptions.markdown(records, order, heading="###")
    if corrupted:
        parts.append("## Common corruptions\n")
        parts.append("Tables: `tables/corruptions.md`, `tables/robust_accuracy_corruptions.csv`; "
                     "plot: `plots/accuracy_vs_severity.png`.\n")
        parts.append(corrupted)
    poisoned = poisoning.drops(records, order)
    if not poisoned.empty:
        parts.append("## Poisoning against the standard model\n")
        parts += [poisoning.markdown(poisoned, nm, data, n)
                  for nm in dict.fromkeys(poisoned["norm"])]
    stage_tables = waterfall.waterfalls(records, order)
    if stage_tables:
        parts.append("## AutoAttack stage by stage\n")
        parts.append("Which stage of the cascade does the work: robust accuracy left after each "
                     "stage, from the per-stage counts each cascade cell records "
                     "(`tables/waterfall_<attack>_<norm>.{md,csv}`).\n")
        parts += [waterfall.markdown(a, nm, t, data, n)
                  for (a, nm), t in stage_tables.items()]
    parts += ["## Plots\n", _plots_section(run, plot_paths)]
    parts.append("## Sanity checklist\n")
    parts.append("Carlini et al. (2019) and Athalye et al. (2018): a WARN is a sign of a "
                 "broken attack or a masked gradient; SKIP means the grid has nothing to check "
                 "it with. Full rows: checklist.md, checklist.json.\n")
    body = checklist.markdown(items)
    body = body.split("\n", 1)[1].replace("\n## ", "\n### ")  # drop its title, nest sections
    parts.append(body)
    if baseline is not None:
        parts.append("## Regression check\n")
        parts.append(compare.markdown(table).split("\n", 1)[1].replace("\n## ", "\n### "))
    path = run.root / "report.md"
    run.store_text(path, "\n".join(parts))
    return paths + [path]


def write_all(records: pd.DataFrame, run: RunDir, order: tables.Order, plot_paths: list[Path],
              baseline: str | Path | None = None, gate: dict | None = None
              ) -> tuple[list[Path], list[checklist.Item]]:
    """The trust layer of a report: new plots, interval LaTeX, checklist files and report.md.
    Returns the paths written and the checklist."""
    run.plots.mkdir(parents=True, exist_ok=True)
    new_plots = figures.write_budget_plots(records, run, order) + figures.write_heatmaps(
        records, run, order)
    items = checklist.checklist(run, records)
    paths = new_plots + write_interval_latex(records, run, order) + checklist.write(items, run)
    paths += write(records, run, order, plot_paths + new_plots, items, baseline, gate)
    return paths, items
