"""AutoAttack's waterfall (bench.reports.waterfall): robust accuracy after each stage of a
cascade cell, from the per-stage counts the cell records, checked against hand counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.reports import waterfall
from bench.reports.report import write_report
from bench.reports.tables import Order
from bench.store.records import info_fields
from tests.conftest import synthetic_record

ROOT = Path(__file__).resolve().parents[1]
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
PLUS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")


def _cell(stage: np.ndarray, stages: tuple[str, ...], defense: str, eps: float = 0.1,
          mask: np.ndarray | None = None) -> dict:
    """A cascade cell whose per-example ``stage`` record is given (-1 misclassified clean, 0
    robust, s broken by stage s), through the store's record builder."""
    mask = (stage == 0) if mask is None else mask
    record = synthetic_record(mask=mask, run="r", data="digits", model="cnn", defense=defense,
                              attack="autoattack", norm="linf", eps=eps,
                              cell_id=f"{defense}.{eps}")
    record.update(info_fields(mask, {"stage": stage}, stages))
    return record


def _order(records: pd.DataFrame) -> Order:
    return Order.of(records, None)


def test_counts_step_down_to_the_cells_accuracy_by_hand():
    # 10 examples: 1 misclassified clean, apgd-ce breaks 4, apgd-t 2, fab-t 0, square 1; 2 left.
    stage = np.array([-1, 1, 1, 1, 1, 2, 2, 4, 0, 0])
    records = pd.DataFrame([_cell(stage, STANDARD, "standard")])
    (key, table), = waterfall.waterfalls(records, _order(records)).items()
    assert key == ("autoattack", "linf")
    assert list(table.columns) == ["clean", *STANDARD]
    assert table.loc[("cnn", "standard", 0.1)].tolist() == [90.0, 50.0, 30.0, 30.0, 20.0]
    assert table.iloc[0, -1] == 100 * records["robust_acc"].iloc[0]


def test_stage_order_is_the_cascades_not_alphabetical():
    # AutoAttack plus: apgd-t runs fifth; alphabetical order would put it second.
    stage = np.array([5, 5, 1, 0])
    records = pd.DataFrame([_cell(stage, PLUS, "pgd-at")])
    assert json.loads(records["details"].iloc[0])["stages"] == list(PLUS)
    table = next(iter(waterfall.waterfalls(records, _order(records)).values()))
    assert list(table.columns) == ["clean", *PLUS]
    assert table.iloc[0].tolist() == [100.0, 75.0, 75.0, 75.0, 75.0, 25.0, 25.0]


def test_records_without_the_stored_order_fall_back_to_sorted_names():
    stage = np.array([1, 2, 0, 0])
    record = _cell(stage, STANDARD, "standard")
    details = json.loads(record["details"])
    del details["stages"]
    record["details"] = json.dumps(details, sort_keys=True)
    table = next(iter(waterfall.waterfalls(pd.DataFrame([record]), Order.of(
        pd.DataFrame([record]), None)).values()))
    assert list(table.columns) == ["clean", *sorted(STANDARD)]


def test_a_cell_scored_below_its_counts_gets_a_scored_column():
    # A random model scored again after the cascade (every draw must be right): 1 of the 2
    # points the cascade left is wrong in some draw, so the cell records 1 robust of 4.
    stage = np.array([1, 0, 0, -1])
    scored = np.array([False, True, False, False])
    records = pd.DataFrame([_cell(stage, STANDARD, "noise", mask=scored),
                            _cell(np.array([1, 1, 0, 0]), STANDARD, "standard")])
    table = next(iter(waterfall.waterfalls(records, _order(records)).values()))
    assert waterfall.SCORED in table.columns
    assert table.loc[("cnn", "noise", 0.1), waterfall.SCORED] == 25.0
    assert table.loc[("cnn", "noise", 0.1), "square"] == 50.0
    assert np.isnan(table.loc[("cnn", "standard", 0.1), waterfall.SCORED])


def test_a_rand_cascade_beside_standard_gets_its_own_table():
    # a random row runs AutoAttack rand (apgd-ce, apgd-dlr): its stages are no columns of the
    # standard table; by hand: rand 4 examples, 1 broken by apgd-ce, 1 by apgd-dlr -> 75, 50
    rand = ("apgd-ce", "apgd-dlr")
    std = _cell(np.array([1, 0, 0, 0]), STANDARD, "standard")
    noisy = _cell(np.array([1, 2, 0, 0]), rand, "noise")
    noisy["attack_options"] = json.dumps({"version": "rand", "norm": "linf"})
    tables = waterfall.waterfalls(pd.DataFrame([std, noisy]), _order(pd.DataFrame([std])))
    assert list(tables) == [("autoattack", "linf"), ("autoattack-rand", "linf")]
    assert list(tables["autoattack", "linf"].columns) == ["clean", *STANDARD]
    assert list(tables["autoattack", "linf"].index) == [("cnn", "standard", 0.1)]
    assert tables["autoattack-rand", "linf"].loc[("cnn", "noise", 0.1)].tolist() == [
        100.0, 75.0, 50.0]


def test_rows_follow_the_plan_and_eps_within_a_row():
    records = pd.DataFrame([_cell(np.array([1, 0]), STANDARD, d, e)
                            for d in ("b", "a") for e in (0.2, 0.1)])
    plan = {"models": ["cnn"], "defenses": ["b", "a"], "attacks": [["autoattack", "linf"]]}
    table = next(iter(waterfall.waterfalls(records, Order.of(records, plan)).values()))
    assert [(d, e) for _, d, e in table.index] == [("b", 0.1), ("b", 0.2), ("a", 0.1),
                                                  ("a", 0.2)]


def test_cells_without_a_cascade_make_no_waterfall():
    record = synthetic_record(mask=np.array([True, False]), run="r", data="digits", model="cnn",
                              defense="standard", attack="pgd", norm="linf", eps=0.1,
                              cell_id="x")
    assert waterfall.waterfalls(pd.DataFrame([record]), Order.of(pd.DataFrame([record]),
                                                                 None)) == {}


@pytest.mark.parametrize("run", ["autoattack"])
def test_committed_run_report_writes_the_waterfall(run, tmp_path):
    """On the committed AutoAttack run: table and plot files, each row ends at the cell's
    recorded robust accuracy, the report shows the section."""
    root = tmp_path / run
    shutil.copytree(ROOT / "results" / run, root,
                    ignore=shutil.ignore_patterns(".robustax.lock*"))
    write_report(root)
    text = (root / "tables/waterfall_autoattack_linf.md").read_text()
    assert "clean → apgd-ce → apgd-t → fab-t → square" in text
    assert (root / "plots/waterfall_autoattack_linf.png").stat().st_size > 10_000
    table = pd.read_csv(root / "tables/waterfall_autoattack_linf.csv")
    records = pd.read_csv(root / "records.csv")
    aa = records[(records["attack"] == "autoattack") & (records["norm"] == "linf")]
    got = {(d, e): s for d, e, s in zip(table["defense"], table["eps"], table["square"])}
    want = {(d, e): 100 * a for d, e, a in zip(aa["defense"], aa["eps"], aa["robust_acc"])}
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in got)
    assert "## AutoAttack stage by stage" in (root / "report.md").read_text()
