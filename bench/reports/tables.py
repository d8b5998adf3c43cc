"""Tables people read: a terminal summary, Markdown per attack × norm, LaTeX per norm, a wide CSV.

Everything here is a pure function of a records frame (one row per cell, with the per-example
worst-case rows of :func:`bench.reports.report.worst_case`) and the plan's order; :mod:`bench.reports.report`
reads the run directory and writes the files. The libraries do the formatting: ``to_csv``,
``to_markdown`` (tabulate), ``Styler.to_latex`` (booktabs rules, a ``\\multirow`` model column)
and tabulate for the terminal.

ε = 0 is shown once, as ``clean``: :func:`check_eps_zero` stops a report whose attack at ε = 0
scores any example differently from the clean cell (the attack moved a point at zero budget).
"""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from collections.abc import Callable

import numpy as np
import pandas as pd

from bench.errors import RobustaxError, printable
from bench.store.io import slug
from bench.store.records import CLEAN

WORST = "worst-case"
"""The attack name of derived rows: per example, the worst over all attacks at a norm and ε."""

CORRUPTION = "severity"
"""The norm of common corruptions (``attacks.corruption``): ε is a severity 1..5, not a ball.
Their cells are averaged over corruptions in tables of their own (:mod:`bench.reports.corruptions`),
never mixed into a norm's worst case; :attr:`Order.norms` leaves this norm out."""

NORM_TEXT = {"linf": "L∞", "l2": "L2", "l1": "L1"}
NORM_TEX = {"linf": r"$\ell_\infty$", "l2": r"$\ell_2$", "l1": r"$\ell_1$"}
MAX_LATEX_EPS = 8
"""ε columns per LaTeX table; a norm with more budgets is split into parts of at most this many."""

LATEX_PACKAGES = ("booktabs", "multirow")


@dataclasses.dataclass(frozen=True)
class Order:
    """Row and column order of every table: the plan's (see :meth:`bench.sweep.plan.Plan.order`)."""

    models: tuple[str, ...]
    defenses: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]  # (attack label, norm); derived worst-case pairs excluded
    worst: tuple[tuple[str, str], ...] = ()  # the derived worst-case pairs, after the attacks
    names: tuple[tuple[str, str], ...] = ()  # (defense row label, registered defense name)

    @classmethod
    def of(cls, records: pd.DataFrame, plan: dict | None) -> Order:
        """The order of every table and plot of ``records``: the plan's (``plan.json``, from
        :meth:`bench.sweep.plan.Plan.order`) where it has one, else sorted; labels the plan does
        not know go last. Computed once per report and passed down to every writer."""
        models = sorted(records["model"].unique())
        defenses = sorted(records["defense"].unique())
        names = tuple(sorted((plan or {}).get("defense_names", {}).items()))
        attacked = records[records["attack"] != CLEAN]
        pairs = sorted(set(zip(attacked["attack"], attacked["norm"])))
        if plan is not None:
            def first(order, items):
                return [i for i in order if i in items] + [i for i in items if i not in order]

            models, defenses = first(plan["models"], models), first(plan["defenses"], defenses)
            pairs = first([tuple(p) for p in plan["attacks"]], pairs)
        return cls(tuple(models), tuple(defenses), tuple(p for p in pairs if p[0] != WORST),
                   tuple(p for p in pairs if p[0] == WORST), names)

    @property
    def all_pairs(self) -> tuple[tuple[str, str], ...]:
        """Every (attack, norm) column, the derived worst-case pairs last."""
        return self.pairs + self.worst

    @property
    def norms(self) -> tuple[str, ...]:
        """The threat models with an ε-ball, in plan order (corruptions are not one)."""
        return tuple(dict.fromkeys(norm for _, norm in self.pairs if norm != CORRUPTION))

    def attacks(self, norm: str) -> list[str]:
        return [a for a, n in self.pairs if n == norm]

    def defense_name(self, label: str) -> str | None:
        """The registered defense name of a row label (None where the plan does not say)."""
        return dict(self.names).get(label)

    def rows(self, index: pd.Index) -> list[tuple[str, str]]:
        return [(m, d) for m in self.models for d in self.defenses if (m, d) in index]


def _attacked(records: pd.DataFrame) -> pd.DataFrame:
    return records[(records["attack"] != CLEAN) & (records["attack"] != WORST)]


def _describe(records: pd.DataFrame) -> tuple[str, str]:
    """The data set name(s) and the number(s) of test images, as text."""
    data = ", ".join(sorted(records["data"].unique()))
    n = ", ".join(f"{v:,}" for v in sorted(records["examples"].unique()))
    return data, n


def _max_half_width(records: pd.DataFrame) -> float:
    """The widest 95% interval half-width (percentage points) among the cells shown."""
    shown = records[(records["attack"] == CLEAN) | (records["eps"] > 0)]
    return float(((shown["ci_high"] - shown["ci_low"]) / 2 * 100).max())


def attack_text(label: str, options: str) -> str:
    """An attack as a caption names it: its label, with the version or the number of steps."""
    try:
        opts = json.loads(options) if options else {}
    except (json.JSONDecodeError, TypeError):
        opts = {}
    if not isinstance(opts, dict):
        return label
    if "version" in opts:
        return f"{label} ({opts['version']})"
    if "steps" in opts:
        restarts = opts.get("restarts") or 1
        extra = f", {restarts} restarts" if restarts > 1 else ""
        return f"{label} ({opts['steps']} steps{extra})"
    return label


def _attack_texts(records: pd.DataFrame, norm: str, attacks: list[str]) -> list[str]:
    a = _attacked(records)
    out = []
    for label in attacks:
        opts = a[(a["attack"] == label) & (a["norm"] == norm)]["attack_options"]
        out.append(attack_text(label, opts.iloc[0] if len(opts) else ""))
    return out


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def check_eps_zero(records: pd.DataFrame,
                   read_mask: Callable[[str], np.ndarray] | None = None) -> None:
    """ε = 0 must reproduce the clean cell, example by example (by count without masks).

    An attack's ε = 0 cell is shown only as ``clean``, so a difference would be hidden; it
    means the attack moved a point at zero budget, which is a bug worth stopping for.
    """
    clean = records[records["attack"] == CLEAN].set_index(["model", "defense"])
    for row in _attacked(records)[lambda r: r["eps"] == 0].itertuples():
        if (row.model, row.defense) not in clean.index:
            continue
        ref = clean.loc[(row.model, row.defense)]
        if read_mask is not None:
            differ = int(np.sum(read_mask(row.cell_id) != read_mask(ref["cell_id"])))
        else:
            differ = abs(int(row.correct) - int(ref["correct"]))
        if differ:
            raise RobustaxError(
                f"{row.model} / {row.defense}: {row.attack} {row.norm} at ε = 0 scores {differ} "
                f"of {row.examples} test images differently from the clean cell "
                f"({100 * row.robust_acc:.1f}% vs clean {100 * ref['robust_acc']:.1f}%): the "
                f"attack moved points at zero budget; fix it, delete cells/{row.cell_id}.json "
                f"and rerun")


def strongest(records: pd.DataFrame, order: Order | None = None) -> pd.DataFrame:
    """Per (model, defense, norm, ε > 0): the accuracy under the strongest evaluation there.

    Where several attacks ran at a norm and ε, that is the per-example worst case over them
    (the ``worst-case`` row); else the one attack's cell. ``attack`` names the strongest
    single attack (lowest accuracy; on a tie the first in ``order``), ``attacks`` all of them,
    and ``combined`` is true where the worst case is below every single attack.
    """
    single = _attacked(records)[lambda r: r["eps"] > 0]
    worst = records[(records["attack"] == WORST) & (records["eps"] > 0)]
    worst = worst.set_index(["model", "defense", "norm", "eps"])
    rows = []
    for (m, d, norm, eps), g in single.groupby(["model", "defense", "norm", "eps"], sort=False):
        if order is not None:
            rank = {a: i for i, a in enumerate(order.attacks(norm))}
            g = g.sort_values("attack", key=lambda s: s.map(rank), kind="stable")
        best = g.iloc[int(np.argmin(g["correct"].to_numpy()))]
        src = worst.loc[(m, d, norm, eps)] if (m, d, norm, eps) in worst.index else best
        rows.append({"model": m, "defense": d, "norm": norm, "eps": eps,
                     "robust_acc": src["robust_acc"], "ci_low": src["ci_low"],
                     "ci_high": src["ci_high"], "correct": src["correct"],
                     "examples": src["examples"], "attack": best["attack"],
                     "attacks": tuple(g["attack"]),
                     "combined": bool(src["correct"] < best["correct"])})
    return pd.DataFrame(rows, columns=["model", "defense", "norm", "eps", "robust_acc", "ci_low",
                                       "ci_high", "correct", "examples", "attack", "attacks",
                                       "combined"])


def _grid(frame: pd.DataFrame, records: pd.DataFrame, order: Order,
          value: str) -> pd.DataFrame:
    """Rows (model, defense) in plan order; columns ``clean`` then ε ascending; ``value`` × 100
    (``value`` is robust_acc or half, the 95% interval half-width)."""
    def values(f):
        if value == "half":
            return (f["ci_high"] - f["ci_low"]) / 2 * 100
        return f[value] * 100

    clean = records[records["attack"] == CLEAN]
    clean = pd.Series(values(clean).to_numpy(),
                      index=pd.MultiIndex.from_frame(clean[["model", "defense"]]), name="clean")
    table = clean.to_frame()
    if not frame.empty:
        eps = frame.assign(_v=values(frame)).pivot_table(
            index=["model", "defense"], columns="eps", values="_v", aggfunc="first", sort=True)
        eps.columns = list(eps.columns)
        table = pd.concat([table, eps], axis=1)
    table = table.loc[order.rows(table.index)]
    table.index.names = ["model", "defense"]
    return table


def attack_table(records: pd.DataFrame, order: Order, attack: str, norm: str,
                 value: str = "robust_acc") -> pd.DataFrame:
    """Robust accuracy (%) of one attack × norm: columns clean and its budgets ε > 0."""
    f = records[(records["attack"] == attack) & (records["norm"] == norm) & (records["eps"] > 0)]
    return _grid(f, records, order, value)


def norm_table(records: pd.DataFrame, order: Order, norm: str,
               value: str = "robust_acc") -> pd.DataFrame:
    """Robust accuracy (%) under the strongest evaluation at each ε of ``norm`` (see
    :func:`strongest`): columns clean and every budget ε > 0 any attack ran at."""
    s = strongest(records, order)
    return _grid(s[s["norm"] == norm], records, order, value)


def wide_table(records: pd.DataFrame, order: Order) -> pd.DataFrame:
    """Every number in one frame, for machines (robust_accuracy.csv): rows (model, defense),
    columns ``clean`` and ``<attack> <norm> ε=<eps>`` for ε > 0, worst-case columns last."""
    r = records[(records["attack"] == CLEAN) | (records["eps"] > 0)].copy()
    r["column"] = ["clean" if a == CLEAN else f"{a} {n} ε={e:g}"
                   for a, n, e in zip(r["attack"], r["norm"], r["eps"])]
    table = r.pivot_table(index=["model", "defense"], columns="column", values="robust_acc",
                          aggfunc="first", sort=False) * 100
    table.columns.name = None
    cols = ["clean"] if "clean" in table.columns else []
    pairs = list(order.pairs) + [(WORST, n) for n in order.norms]
    for attack, norm in pairs:
        g = r[(r["attack"] == attack) & (r["norm"] == norm)].sort_values("eps")
        cols += list(dict.fromkeys(g["column"]))
    return table.loc[order.rows(table.index), cols].round(1)


# --- Markdown ---------------------------------------------------------------------------------

def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (tabulate's pipe format): model, defense, clean, ε=…"""
    t = table.reset_index()
    t.columns = [c if isinstance(c, str) else f"ε={c:g}" for c in t.columns]
    return t.to_markdown(index=False, floatfmt=".1f", missingval="–")


def _eps_note(records: pd.DataFrame, norm: str, attacks: list[str]) -> str:
    """Which budgets of a norm not every attack ran at (so the worst case there is over fewer)."""
    a = _attacked(records)
    a = a[(a["norm"] == norm) & (a["eps"] > 0)]
    ran = a.groupby("eps")["attack"].agg(lambda s: tuple(x for x in attacks if x in set(s)))
    partial = [(e, r) for e, r in ran.items() if len(r) < len(attacks)]
    return "; ".join(f"ε = {e:g}: {_join(list(r))} only" for e, r in partial)


def markdown_sections(records: pd.DataFrame, order: Order) -> list[tuple[str, str, str]]:
    """(norm, file stem, Markdown) per table: the worst case of each norm with two or more
    attacks, then one per attack × norm, in plan order."""

    data, n = _describe(records)
    base = f"{data}, {n} test images, robust accuracy (%)"
    out = []
    for norm in order.norms:
        attacks = order.attacks(norm)
        texts = _attack_texts(records, norm, attacks)
        if len(attacks) > 1:
            note = _eps_note(records, norm, attacks)
            body = (f"### Worst case per example, {NORM_TEXT.get(norm, norm)}\n\n{base}. At each "
                    f"ε an image counts as robust only if every attack failed on it: "
                    f"{_join(texts)}{f' ({note})' if note else ''}.\n\n"
                    f"{markdown_table(norm_table(records, order, norm))}\n")
            out.append((norm, f"robust_accuracy_{WORST}_{norm}", body))
        for attack, text in zip(attacks, texts):
            body = (f"### {text}, {NORM_TEXT.get(norm, norm)}\n\n{base}.\n\n"
                    f"{markdown_table(attack_table(records, order, attack, norm))}\n")
            out.append((norm, f"robust_accuracy_{slug(attack)}_{norm}", body))
    return out


def markdown_index(records: pd.DataFrame, order: Order,
                   sections: list[tuple[str, str, str]]) -> str:
    """robust_accuracy.md: every Markdown table on one page, grouped by norm."""
    data, n = _describe(records)
    parts = [f"# Robust accuracy (%)\n\n{data}, {n} test images; rows model × defense, columns "
             f"clean and ε (an attack at ε = 0 equals clean, checked per example, and is not "
             f"repeated). 95% Clopper–Pearson intervals are in records.csv (half-width at most "
             f"{_max_half_width(records):.1f} points). Each table is also a file of its own "
             f"beside this one; the LaTeX tables are robust_accuracy_<norm>.tex.\n"]
    for norm in order.norms:
        parts.append(f"## {NORM_TEXT.get(norm, norm)}\n")
        parts += [body for nm, _, body in sections if nm == norm]
    return "\n".join(parts)


# --- LaTeX ------------------------------------------------------------------------------------

def latex_escape(text: str) -> str:
    """Escapes LaTeX's special characters in a plain-text label."""
    out = []
    for ch in text:
        out.append({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                    "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                    "^": r"\textasciicircum{}", "ε": r"$\varepsilon$", "∞": r"$\infty$",
                    "–": "--"}.get(ch, ch))
    return "".join(out)


def best_mask(values: pd.DataFrame) -> pd.DataFrame:
    """True at the best (highest) value of each column as printed (one decimal); ties all win,
    and a column whose rows all print the same value has none."""
    shown = values.round(1)
    best = shown.max(axis=0)
    return shown.eq(best, axis=1) & shown.notna() & (shown.min(axis=0) < best)


def latex_table(values: pd.DataFrame, half: pd.DataFrame, *, norm: str, caption: str,
                label: str, intervals: str | None = "footnote", low: pd.DataFrame | None = None,
                high: pd.DataFrame | None = None) -> str:
    """One booktabs table: a ``\\multirow`` model column, defenses beneath, clean then ε.

    ``values``/``half``: robust accuracy and its 95% interval half-width (%), as from
    :func:`norm_table`. The best value per column is bold. ``intervals``: ``"pm"`` prints
    ``± half-width`` in every cell, ``"footnote"`` states the widest in the caption, None
    leaves them out; ``"ci"`` prints the exact interval ``[low, high]`` (from ``low``/``high``,
    in %) in every cell.
    """
    if intervals not in ("pm", "ci", "footnote", None):
        raise ValueError(f"intervals = {intervals!r}; choose 'pm', 'ci', 'footnote' or None")
    if intervals == "ci" and (low is None or high is None):
        raise ValueError("intervals = 'ci' needs the interval bounds low and high")

    def cell(v, h, lo, hi):
        if pd.isna(v):
            return "--"
        if intervals == "ci":
            return f"{v:.1f}" + rf" {{\scriptsize [{lo:.1f}, {hi:.1f}]}}"
        return f"{v:.1f}" + (rf" {{\scriptsize $\pm${h:.1f}}}" if intervals == "pm" else "")

    lows = (low if low is not None else half).to_numpy()
    highs = (high if high is not None else half).to_numpy()
    text = pd.DataFrame([[cell(v, h, lo, hi) for v, h, lo, hi in zip(vr, hr, lr, ur)]
                         for vr, hr, lr, ur in zip(values.to_numpy(), half.to_numpy(), lows,
                                                   highs)],
                        index=values.index)
    group = rf"$\varepsilon$ ({NORM_TEX.get(norm, latex_escape(norm))})"
    text.columns = pd.MultiIndex.from_tuples(
        [("", "clean") if c == "clean" else (group, f"{c:g}") for c in values.columns])
    bold = best_mask(values).to_numpy()
    styler = (text.style.format_index(escape="latex", axis=0).hide(axis="index", names=True)
              .apply(lambda _: np.where(bold, "textbf:--rwrap;", ""), axis=None))
    if intervals == "pm":
        caption += (r" Cells: robust accuracy $\pm$ the half-width of its 95\% Clopper--Pearson"
                    " interval.")
    elif intervals == "ci":
        caption += r" Cells: robust accuracy and its exact 95\% Clopper--Pearson interval."
    elif intervals == "footnote":
        caption += (r" 95\% Clopper--Pearson intervals are at most "
                    rf"$\pm${np.nanmax(half.to_numpy()):.1f} points.")
    latex = styler.to_latex(column_format="ll" + "r" * len(values.columns), hrules=True,
                            multirow_align="t", multicol_align="c", clines=None,
                            caption=caption, label=label, position_float="centering",
                            environment="table")
    # booktabs' rule under the ε group header (Styler has no option for it)
    n_eps = sum(c != "clean" for c in values.columns)
    head = f"\\multicolumn{{{n_eps}}}{{c}}{{{group}}} \\\\\n" if n_eps > 1 else f"{group} \\\\\n"
    return latex.replace(head, head + f"\\cmidrule(lr){{4-{3 + n_eps}}}\n", 1)


def latex_norm(records: pd.DataFrame, order: Order, norm: str,
               intervals: str | None = "footnote", max_eps: int = MAX_LATEX_EPS) -> str:
    """The LaTeX file of one norm: the strongest evaluation at each ε (worst case over the
    attacks run there), split into parts of at most ``max_eps`` ε columns."""
    values, half = norm_table(records, order, norm), norm_table(records, order, norm, "half")
    low = high = None
    if intervals == "ci":
        low = norm_table(records, order, norm, "ci_low")
        high = norm_table(records, order, norm, "ci_high")
    data, n = _describe(records)
    attacks = order.attacks(norm)
    texts = [latex_escape(t) for t in _attack_texts(records, norm, attacks)]
    if len(attacks) > 1:
        note = _eps_note(records, norm, attacks)
        how = (rf"At each $\varepsilon$, the worst case per example over {_join(texts)}"
               f"{f' ({latex_escape(note)})' if note else ''}: an image counts as robust only if "
               "every attack failed on it.")
    else:
        how = f"Attack: {texts[0]}."
    caption = (rf"Robust accuracy (\%) on {latex_escape(data)} ({n} test images) under "
               rf"{NORM_TEX.get(norm, latex_escape(norm))}-bounded attacks. {how} "
               "Best value per column in bold.")
    eps = [c for c in values.columns if c != "clean"]
    parts = max(1, math.ceil(len(eps) / max_eps))
    size = math.ceil(len(eps) / parts) if eps else 0
    tables = []
    for i in range(parts):
        cols = ["clean"] + eps[i * size:(i + 1) * size]
        cap, lab = caption, f"tab:robust-accuracy-{norm}"
        if parts > 1:
            cap, lab = f"{caption} Part {i + 1} of {parts}.", f"{lab}-{i + 1}"
        tables.append(latex_table(values[cols], half[cols], norm=norm, caption=cap, label=lab,
                                  intervals=intervals,
                                  low=None if low is None else low[cols],
                                  high=None if high is None else high[cols]))
    head = (f"% robustax: robust accuracy, {norm}; generated by `robustax report`.\n"
            f"% Needs \\usepackage{{{','.join(LATEX_PACKAGES)}}}.\n")
    return head + "\n".join(tables)


def standalone_document(tex: str) -> str:
    """A minimal LaTeX document around generated tables (for a compile check or a preview)."""
    return ("\\documentclass{article}\n"
            f"\\usepackage{{{','.join(LATEX_PACKAGES)}}}\n"
            "\\usepackage[margin=2cm]{geometry}\n"
            "\\usepackage{caption}\n"  # space between a caption and the table below it
            "\\begin{document}\n" + tex + "\\end{document}\n")


# --- terminal ---------------------------------------------------------------------------------

_ADAPTIVE = " (adaptive)"


def shorten(label: str, n: int | None) -> str:
    """``label`` escaped (:func:`bench.errors.printable`: no raw control character reaches the
    terminal) and cut to ``n`` characters with an ellipsis (terminal only; None: not cut). An
    adaptive row that must be cut reads ``↳ adaptive``: it always follows its naive row, so it
    never reads like that row or another adaptive one."""
    label = printable(label)  # never a raw control character on the terminal
    if n is None or len(label) <= n:
        return label
    if label.endswith(_ADAPTIVE):
        return shorten("↳ adaptive", n)
    return label[:n - 1] + "…"


def _render(header: list[str], rows: list[list[str]], cols: list[int], align: str) -> str:
    """tabulate's plain layout of the two label columns, clean and the ε columns ``cols``."""
    from tabulate import tabulate

    idx = [0, 1, 2] + cols
    return tabulate([[r[i] for i in idx] for r in rows], headers=[header[i] for i in idx],
                    tablefmt="simple", disable_numparse=True, preserve_whitespace=True,
                    colalign=["left", "left", "right"] + [align] * len(cols))


def _fits(text: str, width: int) -> bool:
    return all(len(line) <= width for line in text.splitlines())


def _norm_block(records: pd.DataFrame, order: Order, norm: str, width: int,
                cut: dict[str, str]) -> str:
    """One norm of the terminal summary: rows model × defense, columns clean and ε. Labels are
    cut, then ε columns split into stacked tables, only as far as needed to fit ``width``."""
    values = norm_table(records, order, norm)
    eps = [c for c in values.columns if c != "clean"]
    s = strongest(records, order)
    cells = s[s["norm"] == norm].set_index(["model", "defense", "eps"])
    attacks = order.attacks(norm)
    several = len(attacks) > 1
    header = ["model", "defense", "clean"] + [f"ε={e:g}" for e in eps]
    align = "left" if several else "right"

    def rows(n_label, n_attack):
        out, last = [], None
        for (m, d), vals in values.iterrows():
            row = [shorten(m, n_label) if m != last else "", shorten(d, n_label),
                   f"{vals['clean']:.1f}"]
            last = m
            for e in eps:
                if (m, d, e) not in cells.index:
                    row.append("–")
                    continue
                c = cells.loc[(m, d, e)]
                acc = 100 * c["robust_acc"]
                if several:
                    mark = "+" if c["combined"] else ""
                    row.append(f"{acc:5.1f} {shorten(c['attack'], n_attack)}{mark}")
                else:
                    row.append(f"{acc:.1f}")
            out.append(row)
        return out

    everything = list(range(3, len(header)))
    for n_label, n_attack in ((None, None), (18, 8), (12, 5)):
        text = _render(header, rows(n_label, n_attack), everything, align)
        if _fits(text, width):
            break
    if several:
        cut.update({shorten(a, n_attack): a for a in attacks
                    if shorten(a, n_attack) != printable(a)})
    if not _fits(text, width):
        body = rows(n_label, n_attack)
        for k in range(len(everything) - 1, 0, -1):
            parts = [_render(header, body, everything[i:i + k], align)
                     for i in range(0, len(everything), k)]
            text = "\n\n".join(parts)
            if _fits(text, width):
                break
    shown = [printable(a) for a in attacks]
    title = (f"{NORM_TEXT.get(norm, norm)}: worst case per example over {', '.join(shown)}"
             if several else f"{NORM_TEXT.get(norm, norm)}: {shown[0]}")
    return textwrap.shorten(title, width, placeholder="…") + "\n" + text


def terminal_summary(records: pd.DataFrame, order: Order, width: int = 100,
                     where: str | None = None, extra: str = "") -> str:
    """The summary that ``robustax run`` and ``robustax report`` print: one block per norm,
    rows model × defense, columns clean and ε; each cell the strongest evaluation (the
    per-example worst case where several attacks share the budget) and, where several ran,
    the strongest single attack. Lines fit ``width`` columns: long labels are cut and ε
    columns split only when needed. ``extra``: a further block (the corruption means)."""
    width = max(width, 40)
    data, n = _describe(records)
    lines = [textwrap.fill(f"Robust accuracy (%) on {data}, {n} test images (95% intervals "
                           f"±{_max_half_width(records):.1f} points at most)", width)]
    cut: dict[str, str] = {}
    s = strongest(records)
    norms = [norm for norm in order.norms if (s["norm"] == norm).any()]
    for norm in norms:
        lines += ["", _norm_block(records, order, norm, width, cut)]
    if extra:
        lines += ["", extra]
    if not norms and not extra:  # no attack at a budget above 0: clean accuracy only
        clean = norm_table(records, order, "")
        rows = [[shorten(m, None), shorten(d, None), f"{v:.1f}"]
                for (m, d), v in clean["clean"].items()]
        lines += ["", _render(["model", "defense", "clean"], rows, [], "right")]
    notes = []
    if any(len(order.attacks(norm)) > 1 for norm in norms):
        notes.append("Each cell: the per-example worst case over the attacks run at that ε, "
                     "and the strongest single attack there (the first in the config on a tie); "
                     "+ where the worst case is lower than that attack alone.")
    if cut:
        notes.append("Cut: " + ", ".join(f"{k} = {printable(v)}" for k, v in cut.items()) + ".")
    notes.append("All attacks and intervals: " + (f"{where}/" if where else "tables/")
                 + " (Markdown, LaTeX, CSV).")
    lines.append("")
    lines += [textwrap.fill(t, width) for t in notes]
    return "\n".join(lines) + "\n"
