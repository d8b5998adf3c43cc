"""The seed's name for label flipping (``l-pda``) and what poisoning costs against the same
model's ``standard`` row (bench.reports.poisoning), checked against hand-made masks."""

from __future__ import annotations

import tomllib

import numpy as np
import pandas as pd
import pytest

from bench.errors import ConfigError
from bench.reports import poisoning
from bench.reports.tables import Order
from bench.sweep.config import parse_config
from bench.sweep.plan import make_plan
from bench.sweep.registry import DEFENSES
from tests.conftest import synthetic_record

TOML = """
name = "p"
[data]
name = "digits"
[[models]]
name = "mlp"
width = 8
[[defenses]]
name = "standard"
epochs = 1
[[defenses]]
name = "{flip}"
fraction = 0.3
epochs = 1
[[attacks]]
name = "pgd"
steps = 2
eps = [0.0, 0.1]
"""


def _plan(flip: str):
    return make_plan(parse_config(tomllib.loads(TOML.format(flip=flip))), "fingerprint")


def test_l_pda_is_label_flip_under_its_canonical_name_and_identity():
    alias, canonical = _plan("l-pda"), _plan("label-flip")
    d = alias.config.defenses[1]
    assert (d.name, d.label) == ("label-flip", "label-flip")
    assert [c.cell_id for c in alias.cells] == [c.cell_id for c in canonical.cells]
    assert [t.digest for t in alias.trainings] == [t.digest for t in canonical.trainings]
    assert alias.order()["defense_names"] == {"standard": "standard", "label-flip": "label-flip"}


def test_alias_is_listed_and_unknown_names_still_fail():
    assert "l-pda" in DEFENSES and DEFENSES.canonical("l-pda") == "label-flip"
    assert "Also accepted as: l-pda." in dict(DEFENSES.describe())["label-flip"]
    with pytest.raises(ConfigError, match="unknown defense 'l-pdb'"):
        _plan("l-pdb")
    with pytest.raises(ValueError, match="clashes"):
        DEFENSES.alias("standard", "label-flip")


def _records() -> pd.DataFrame:
    """10 examples. standard: clean 9, at ε 0.1 PGD 6 and FGSM 7 right, both 5 (they fail on
    different points); poisoned: clean 8, PGD 3, FGSM 4, both 2. The worst-case rows are the
    AND of the two attacks' masks, as the report derives them."""
    from bench.reports.tables import WORST

    def mask(correct):
        m = np.zeros(10, bool)
        m[list(correct)] = True
        return m

    def cell(defense, attack, eps, m):
        return synthetic_record(mask=m, run="r", data="digits", model="mlp", defense=defense,
                                attack=attack, norm="none" if attack == "clean" else "linf",
                                eps=eps, cell_id=f"{defense}.{attack}.{eps}")

    rows = []
    for d, clean, pgd, fgsm in (("standard", range(9), range(6), [0, 1, 2, 3, 4, 8, 7]),
                                ("flip-30%", range(8), range(3), [0, 1, 5, 6])):
        rows += [cell(d, "clean", 0.0, mask(clean)), cell(d, "pgd", 0.1, mask(pgd)),
                 cell(d, "fgsm", 0.1, mask(fgsm)), cell(d, WORST, 0.1, mask(pgd) & mask(fgsm))]
    return pd.DataFrame(rows)


def _order(records, names):
    return Order.of(records, {"models": ["mlp"], "defenses": ["standard", "flip-30%"],
                              "attacks": [["pgd", "linf"], ["fgsm", "linf"]],
                              "defense_names": names})


def test_differences_by_hand_against_the_worst_case():
    records = _records()
    long = poisoning.drops(records, _order(records, {"standard": "standard",
                                                     "flip-30%": "label-flip"}))
    got = {r.eps: (r.poisoned, r.standard_acc, r.difference) for r in long.itertuples()}
    assert got == {0.0: (80.0, 90.0, -10.0), 0.1: (20.0, 50.0, -30.0)}
    text = poisoning.markdown(long, "linf", "digits", 10)
    assert "| mlp     | flip-30%  | 80.0 (−10.0) | 20.0 (−30.0) |" in text


def test_rows_are_found_by_registered_name_not_label():
    records = _records()
    # Labelled "standard" but trained by pgd-at: no reference row, so no table.
    assert poisoning.drops(records, _order(records, {"standard": "pgd-at",
                                                     "flip-30%": "label-flip"})).empty
    # A plan written before defense names were stored: no table either (never guessed).
    assert poisoning.drops(records, _order(records, {})).empty
    assert poisoning.write(records, _order(records, {})) == {}
