"""What poisoning costs: a poisoned model's clean and robust accuracy against the same
architecture's ``standard`` row of the same run.

A training-data poisoning defense row (``label-flip``, which the literature also calls L-PDA)
is read beside the row of the same model trained by ``standard`` on clean labels: per norm,
clean accuracy and the strongest evaluation at each ε (the per-example worst case over the
attacks run there, as in every norm table), each shown as ``poisoned (difference)`` in points,
negative where poisoning costs accuracy. Rows are found by their registered defense name
(``plan.json``'s ``defense_names``), not by label.

- ``tables/poisoning_<norm>.md``: one table per norm.
- ``tables/poisoning.csv``: the numbers in long form (model, defense, norm, ε, poisoned,
  standard, difference).
"""

from __future__ import annotations

import pandas as pd

from bench.reports.tables import NORM_TEXT, Order, norm_table

POISONING = ("label-flip",)
"""Registered defenses that poison the training data."""

REFERENCE = "standard"


def _pairs(order: Order, index: pd.Index) -> list[tuple[str, str, str]]:
    """(model, poisoned defense label, standard defense label) of every poisoned row with a
    standard row on the same model (the one labelled ``standard`` if several are)."""
    names = dict(order.names)
    standard = sorted((label != REFERENCE, label) for label, n in names.items() if n == REFERENCE)
    out = []
    for m, d in order.rows(index):
        if names.get(d) not in POISONING:
            continue
        ref = next((s for _, s in standard if (m, s) in index), None)
        if ref is not None:
            out.append((m, d, ref))
    return out


def drops(records: pd.DataFrame, order: Order) -> pd.DataFrame:
    """Long form: model, defense, standard (its label), norm, eps (0: clean), poisoned,
    standard_acc, difference (points; poisoned − standard)."""
    rows = []
    for norm in order.norms:
        table = norm_table(records, order, norm)
        for m, d, ref in _pairs(order, table.index):
            for col in table.columns:
                p, s = table.loc[(m, d), col], table.loc[(m, ref), col]
                if pd.isna(p) or pd.isna(s):
                    continue
                rows.append({"model": m, "defense": d, "standard": ref, "norm": norm,
                             "eps": 0.0 if col == "clean" else float(col), "poisoned": p,
                             "standard_acc": s, "difference": p - s})
    return pd.DataFrame(rows, columns=["model", "defense", "standard", "norm", "eps",
                                       "poisoned", "standard_acc", "difference"])


def markdown(long: pd.DataFrame, norm: str, data: str, n: int) -> str:
    """One norm's table: rows model × poisoned defense, columns clean and ε."""
    g = long[long["norm"] == norm]
    cells = {(m, d): {} for m, d in zip(g["model"], g["defense"])}
    for r in g.itertuples():
        col = "clean" if r.eps == 0 else f"ε={r.eps:g}"
        sign = "+" if r.difference > 0 else ("−" if r.difference < 0 else "±")
        cells[r.model, r.defense][col] = f"{r.poisoned:.1f} ({sign}{abs(r.difference):.1f})"
    table = pd.DataFrame.from_dict(cells, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "defense"])
    ref = ", ".join(sorted(set(g["standard"])))
    return (f"### Poisoning against `{ref}`, {NORM_TEXT.get(norm, norm)}\n\n{data}, {n} test "
            f"images: a poisoned model's accuracy (%) and, in brackets, its difference in "
            f"points from the same model trained by `{ref}` on clean labels (clean, and the "
            f"strongest evaluation at each ε).\n\n"
            f"{table.reset_index().to_markdown(index=False, disable_numparse=True)}\n")


def write(records: pd.DataFrame, order: Order) -> dict[str, str]:
    """{tables/ file name: text} of the poisoning tables (empty without a poisoned row beside a
    standard row)."""
    long = drops(records, order)
    if long.empty:
        return {}
    data = ", ".join(sorted(records["data"].unique()))
    n = int(records["examples"].max())
    files = {f"poisoning_{norm}.md": markdown(long, norm, data, n)
             for norm in dict.fromkeys(long["norm"])}
    files["poisoning.csv"] = long.to_csv(index=False, float_format="%.4g")
    return files
