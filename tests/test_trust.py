"""Trust in the numbers: intervals, the McNemar regression gate, the sanity checklist, the
budget curves, interval LaTeX and report.md.

Run directories are written by hand (records + masks, info and gradient records), so every
expected number is counted by hand; one small sweep checks that the runner records what the
checklist and the curves read.
"""

import json
import textwrap
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench import cli
from bench.reports import checklist, compare
from bench.reports.report import report_records
from bench.store.io import atomic_write_json
from bench.store.records import RunDir, clopper_pearson
from bench.sweep import engine
from tests.conftest import synthetic_record

N = 40
PGD = {"norm": "linf", "steps": 20, "restarts": 1}


def cell(model, defense, attack, norm, eps, mask, options=None, info=None, details=""):
    return dict(model=model, defense=defense, attack=attack, norm=norm, eps=eps,
                mask=np.asarray(mask, bool), options=options, info=info, details=details)


def prefix(k, n=N):
    return np.arange(n) < k


def write_run(root, cells, *, data="digits", seed=0, names=None, defense_options=None,
              gradients=None):
    """A run directory as `robustax run` leaves it: plan.json, config.json (attack names),
    cells/, masks/, info/ and gradients/."""
    run = RunDir(root)
    ids = []
    for c in cells:
        a = c["attack"]
        cid = f"{c['model']}.{c['defense']}.{a}-{c['norm']}.eps{c['eps']:g}"
        rec = synthetic_record(run="t", data=data, model=c["model"], defense=c["defense"], attack=a,
                          norm=c["norm"], eps=c["eps"], mask=c["mask"], seconds=0.0,
                          compile_seconds=0.0, seed=seed, cell_id=cid, checkpoint="w0",
                          attack_options=c["options"], defense_options=defense_options)
        rec["details"] = c["details"]
        if c["info"]:
            run.write_info(cid, c["info"])
        run.write_cell(rec, c["mask"])
        ids.append(cid)
        if a == "clean" and gradients is not None and (c["model"], c["defense"]) in gradients:
            run.store_json(run.gradient_path(cid), gradients[c["model"], c["defense"]])
    pairs = list(dict.fromkeys((c["attack"], c["norm"]) for c in cells if c["attack"] != "clean"))
    run.write_plan({"models": list(dict.fromkeys(c["model"] for c in cells)),
                    "defenses": list(dict.fromkeys(c["defense"] for c in cells)),
                    "attacks": [list(p) for p in pairs], "cells": ids})
    names = names or {}
    atomic_write_json(root / "config.json", {"config": {"name": "t", "attacks": [
        {"name": names.get(a, a), "label": a} for a, _ in dict.fromkeys(pairs)]}})
    return run


def healthy_cells(model="m", defense="d", drop=None):
    """Clean 36/40, PGD L∞ at 0.1 / 0.2 keeps 20 / 8, FGSM keeps 24 / 12 (a superset)."""
    out = [cell(model, defense, "clean", "none", 0.0, prefix(36)),
           cell(model, defense, "pgd", "linf", 0.1, prefix(20), PGD),
           cell(model, defense, "pgd", "linf", 0.2, prefix(8), PGD),
           cell(model, defense, "fgsm", "linf", 0.1, prefix(24), {"norm": "linf"}),
           cell(model, defense, "fgsm", "linf", 0.2, prefix(12), {"norm": "linf"})]
    if drop is not None:
        out[1] = cell(model, defense, "pgd", "linf", 0.1, prefix(20 - drop), PGD)
    return out


# --- intervals and the test -----------------------------------------------------------------

def test_clopper_pearson_known_values():
    """Closed forms at the ends (k = 0: upper = 1 − (α/2)^(1/n)) and the tabulated 5/10."""
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1, abs=1e-12)
    lo, hi = clopper_pearson(10, 10)
    assert lo == pytest.approx(0.025 ** 0.1, abs=1e-12) and hi == 1.0
    lo, hi = clopper_pearson(5, 10)
    assert (lo, hi) == (pytest.approx(0.187086, abs=1e-6), pytest.approx(0.812914, abs=1e-6))


def test_mcnemar_on_constructed_masks():
    """b = 1 example robust only before, c = 9 only after, 30 concordant: exact p =
    2·(C(10,0) + C(10,1))/2^10 = 22/1024; statistic min(b, c) = 1 (statsmodels' convention)."""
    first = np.r_[np.ones(1), np.zeros(9), np.ones(20), np.zeros(10)].astype(bool)
    second = np.r_[np.zeros(1), np.ones(9), np.ones(20), np.zeros(10)].astype(bool)
    t = compare.mcnemar(first, second)
    assert (t.n, t.b, t.c, t.statistic) == (40, 1, 9, 1)
    assert t.p == pytest.approx(22 / 1024, rel=1e-12)
    assert t.diff == pytest.approx(8 / 40)
    assert t.low < 8 / 40 < t.high
    same = compare.mcnemar(first, first)
    assert (same.p, same.diff) == (1.0, 0.0) and same.low < 0 < same.high
    balanced = compare.mcnemar(np.r_[first[:10], second[:10]], np.r_[second[:10], first[:10]])
    assert (balanced.b, balanced.c, balanced.p) == (10, 10, 1.0)


def _wilson(k, n, z=stats.norm.ppf(0.975)):
    """Wilson's score interval written out (the closed form, not scipy's)."""
    p = k / n
    mid, half = 2 * n * p + z * z, z * np.sqrt(4 * n * p * (1 - p) + z * z)
    return (mid - half) / (2 * (n + z * z)), (mid + half) / (2 * (n + z * z))


def test_paired_difference_interval_by_hand():
    """Newcombe's method 10. With a·d = b·c the correlation φ is 0 and the interval is the
    independent-samples hybrid score interval of the two margins, computed here from the
    closed-form Wilson limits; φ > 0 (concordant pairs) narrows it."""
    a, b, c, d = 4, 2, 6, 3  # a·d = b·c = 12
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = _wilson(a + b, n), _wilson(a + c, n)
    lo, hi = compare.paired_difference_ci(a, b, c, d)
    assert lo == pytest.approx(p2 - p1 - np.hypot(p2 - l2, u1 - p1), rel=1e-9)
    assert hi == pytest.approx(p2 - p1 + np.hypot(u2 - p2, p1 - l1), rel=1e-9)
    a, b, c, d = 20, 2, 6, 12  # φ > 0: concordant pairs narrow the interval
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = _wilson(a + b, n), _wilson(a + c, n)
    lo_c, hi_c = compare.paired_difference_ci(a, b, c, d)
    assert p2 - p1 - np.hypot(p2 - l2, u1 - p1) + 0.05 < lo_c < p2 - p1 < hi_c
    assert hi_c < p2 - p1 + np.hypot(u2 - p2, p1 - l1) - 0.05  # [-0.034, 0.227] vs [-0.111, 0.299]


def test_holm_adjustment_by_hand():
    got = compare.holm(np.array([0.01, 0.04, 0.03, 0.2]))
    np.testing.assert_allclose(got, [0.04, 0.09, 0.09, 0.2])


# --- the regression gate ----------------------------------------------------------------------

def _compare(capsys, *args):
    code = cli.main(["compare", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compare_passes_an_identical_run(tmp_path, capsys):
    base = write_run(tmp_path / "base", healthy_cells())
    new = write_run(tmp_path / "new", healthy_cells())
    code, out, _ = _compare(capsys, base.root, new.root)
    assert code == 0 and "PASS: 5 cells matched by id (5 with the same cell id)" in out
    table = pd.read_csv(new.root / "compare" / "compare.csv")
    assert len(table) == 5 and (table["diff"] == 0).all() and (table["p"] == 1).all()
    assert "| m " in (new.root / "compare" / "compare.md").read_text()


def test_compare_flags_a_constructed_drop(tmp_path, capsys):
    """PGD at 0.1 loses 12 of its 20 robust examples (−30 pp, exact p = 2/2^12): fails the
    gate under `any` and `drop`, not under `rise`, not with a tolerance above 30 pp, and a
    1-example drop is not significant after Holm."""
    base = write_run(tmp_path / "base", healthy_cells())
    new = write_run(tmp_path / "new", healthy_cells(drop=12))
    code, out, _ = _compare(capsys, base.root, new.root, "--out", tmp_path / "c")
    assert code == 1 and "FAIL" in out
    table = pd.read_csv(tmp_path / "c" / "compare.csv")
    bad = table[table["fails"] == True]  # noqa: E712
    assert list(zip(bad["attack"], bad["eps"])) == [("pgd", 0.1)]
    row = bad.iloc[0]
    assert (row["base_only"], row["new_only"], row["diff"]) == (12, 0, -30.0)
    assert row["p"] == pytest.approx(2 / 2 ** 12)
    assert row["p_holm"] == pytest.approx(5 * 2 / 2 ** 12)
    assert row["diff_low"] < -30 < row["diff_high"] < 0
    assert _compare(capsys, base.root, new.root, "--fail-on", "drop")[0] == 1
    assert _compare(capsys, base.root, new.root, "--fail-on", "rise")[0] == 0
    assert _compare(capsys, new.root, base.root, "--fail-on", "rise")[0] == 1
    assert _compare(capsys, base.root, new.root, "--tolerance", "31")[0] == 0
    one = write_run(tmp_path / "one", healthy_cells(drop=1))
    assert _compare(capsys, base.root, one.root, "--tolerance", "0")[0] == 0
    # 6 lost: p = 2/2^6 ≈ 0.031 < 0.05 alone, but 5 × that after Holm over 5 cells: passes
    six = write_run(tmp_path / "six", healthy_cells(drop=6))
    assert _compare(capsys, base.root, six.root, "--tolerance", "0", "--out", tmp_path / "s")[0] == 0
    table = pd.read_csv(tmp_path / "s" / "compare.csv")
    assert table["p"].min() == pytest.approx(2 / 2 ** 6) and not table["fails"].any()


def test_compare_exits_2_on_unmatchable_runs(tmp_path, capsys):
    base = write_run(tmp_path / "base", healthy_cells())
    other = write_run(tmp_path / "other", healthy_cells(model="x"))
    code, out, err = _compare(capsys, base.root, other.root)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no cell" in err and "matches" in err
    mnist = write_run(tmp_path / "mnist", healthy_cells(), data="mnist5k")
    code, _, err = _compare(capsys, base.root, mnist.root)
    assert code == 2 and "different data sets (digits vs mnist5k)" in err
    code, _, err = _compare(capsys, base.root, tmp_path / "nothing")
    assert code == 2 and "not a run directory" in err
    (other.root / "masks" / "x.d.clean-none.eps0.npy").write_bytes(b"junk")
    code, _, err = _compare(capsys, other.root, other.root)
    assert code == 2 and "x.d.clean-none.eps0.npy" in err and len(err.strip().splitlines()) == 1


def test_compare_lists_cells_only_in_one_run(tmp_path, capsys):
    base = write_run(tmp_path / "base", healthy_cells())
    extra = cell("m", "d", "pgd", "linf", 0.3, prefix(2), PGD)
    new = write_run(tmp_path / "new", healthy_cells()[:-1] + [extra])
    code, out, _ = _compare(capsys, base.root, new.root)
    assert code == 0
    assert "1 cells only in baseline: m/d/fgsm linf ε=0.2" in out
    assert "1 cells only in new: m/d/pgd linf ε=0.3" in out
    table = pd.read_csv(new.root / "compare" / "compare.csv")
    assert sorted(table["status"]) == ["matched"] * 4 + ["only in baseline", "only in new"]


def test_compare_by_label_matches_another_training_recipe(tmp_path, capsys):
    """Same names, another defense recipe: by identity nothing matches (exit 2, with a
    hint), by label every cell does."""
    base = write_run(tmp_path / "base", healthy_cells(), defense_options={"epochs": 20})
    new = write_run(tmp_path / "new", healthy_cells(drop=12), defense_options={"epochs": 40})
    code, _, err = _compare(capsys, base.root, new.root)
    assert code == 2 and "--by label" in err
    code, out, _ = _compare(capsys, base.root, new.root, "--by", "label")
    assert code == 1 and "5 cells matched by label" in out


# --- the checklist ------------------------------------------------------------------------------

def _items(root, cells, **kw):
    run = write_run(root, cells, **kw)
    return {i.key: i for i in checklist.checklist(run, report_records(run))}


def test_checklist_passes_a_healthy_run(tmp_path):
    grads = {("m", "d"): {"examples": N, "zero_examples": 0, "entries": 64 * N,
                          "zero_entries": 3, "nonfinite_examples": 0}}
    first = np.where(prefix(20), -1, np.arange(N) % 3)  # fooled within 2 of 20 steps
    cells = healthy_cells()
    cells[1] = cell("m", "d", "pgd", "linf", 0.1, prefix(20), PGD, {"first_fooled_step": first})
    cells.append(cell("m", "d", "square", "linf", 0.1, prefix(30), {"norm": "linf",
                                                                    "queries": 100}))
    items = _items(tmp_path / "r", cells, gradients=grads)
    assert {k: i.status for k, i in items.items()} == {
        "monotone": "PASS", "iterative": "PASS", "white-box": "PASS", "stable": "PASS",
        "gradients": "PASS", "draws": "SKIP"}  # no random model here


def test_checklist_skips_what_the_grid_cannot_check(tmp_path):
    cells = [cell("m", "d", "clean", "none", 0.0, prefix(36)),
             cell("m", "d", "pgd", "linf", 0.1, prefix(20), PGD)]
    items = _items(tmp_path / "r", cells)
    assert {i.status for i in items.values()} == {"SKIP"}


def test_checklist_flags_accuracy_rising_with_eps(tmp_path):
    cells = healthy_cells()
    cells[2] = cell("m", "d", "pgd", "linf", 0.2, prefix(26), PGD)  # 20 → 26 of 40
    item = _items(tmp_path / "r", cells)["monotone"]
    assert item.status == "WARN" and "largest rise 15.0 pp" in item.summary
    row = [r for r in item.rows if r["attack"] == "pgd"][0]
    assert row["examples robust again at a larger ε"] == 6


def test_checklist_flags_an_unbounded_eps_that_leaves_accuracy(tmp_path):
    cells = healthy_cells() + [cell("m", "d", "pgd", "linf", 1.0, prefix(4), PGD)]
    assert _items(tmp_path / "a", cells)["monotone"].status == "WARN"  # 10% at L∞ ε = 1
    cells[-1] = cell("m", "d", "pgd", "linf", 1.0, prefix(0), PGD)
    assert _items(tmp_path / "b", cells)["monotone"].status == "PASS"


def test_checklist_flags_single_step_beating_iterative(tmp_path):
    """FGSM breaks examples 0-9 (of the 20 PGD leaves) at 0.1: 10/40 = 25% per example."""
    cells = healthy_cells()
    cells[3] = cell("m", "d", "fgsm", "linf", 0.1, (np.arange(N) >= 10) & prefix(30),
                    {"norm": "linf"})
    item = _items(tmp_path / "r", cells, names={"fgsm": "fgsm"})["iterative"]
    assert item.status == "WARN"
    row = max(item.rows, key=lambda r: r["broken only by single-step"])
    assert (row["eps"], row["broken only by single-step"]) == (0.1, 10)


def test_checklist_flags_black_box_and_noise_beating_white_box(tmp_path):
    square = cell("m", "d", "sq", "linf", 0.1, prefix(40) & (np.arange(N) >= 5),
                  {"norm": "linf", "queries": 100})
    item = _items(tmp_path / "a", healthy_cells() + [square], names={"sq": "square"})
    assert item["white-box"].status == "WARN"
    assert max(r["broken only by black-box"] for r in item["white-box"].rows) == 5
    noise = cell("m", "d", "noise", "linf", 0.2, np.arange(N) >= 36, {"norm": "linf"})
    assert _items(tmp_path / "b", healthy_cells() + [noise])["white-box"].status == "WARN"
    aa = cell("m", "d", "aa", "linf", 0.1, prefix(17), {"norm": "linf", "version": "standard"},
              details=json.dumps({"broken_by": {"apgd-ce": 18, "square": 3}}))
    item = _items(tmp_path / "c", healthy_cells() + [aa], names={"aa": "autoattack"})
    assert item["white-box"].status == "WARN" and "broke at most 3 points" in \
        item["white-box"].summary
    aa["details"] = json.dumps({"broken_by": {"apgd-ce": 21, "square": 0}})
    assert _items(tmp_path / "d", healthy_cells() + [aa],
                  names={"aa": "autoattack"})["white-box"].status == "PASS"


def test_checklist_flags_an_unstable_estimate(tmp_path):
    """8 of the 16 examples PGD breaks fall only at step 16 of 20 (70% after 15 → 50%):
    the 20-step number is not converged. Square likewise over its queries; and two PGD
    labels that differ only in steps."""
    first = np.where(prefix(20), -1, np.where(np.arange(N) < 28, 16, 2))
    cells = healthy_cells()
    cells[1] = cell("m", "d", "pgd", "linf", 0.1, prefix(20), PGD, {"first_fooled_step": first})
    item = _items(tmp_path / "a", cells)["stable"]
    assert item.status == "WARN" and "70.0% after 15 → 50.0% after 20 steps" in item.summary
    queries = np.where(prefix(30), 100, np.where(np.arange(N) < 35, 90, 3))  # 5 of 40 late
    sq = cell("m", "d", "sq", "linf", 0.1, prefix(30), {"norm": "linf", "queries": 100},
              {"queries": queries})
    assert _items(tmp_path / "b", healthy_cells() + [sq],
                  names={"sq": "square"})["stable"].status == "WARN"
    pgd100 = cell("m", "d", "pgd-100", "linf", 0.1, prefix(14), {**PGD, "steps": 100})
    item = _items(tmp_path / "c", healthy_cells() + [pgd100], names={"pgd-100": "pgd"})
    assert item["stable"].status == "WARN" and "15.0 pp" in item["stable"].summary


def _quantised(params, x):
    """A linear model behind a rounding front end: its input gradient is exactly zero."""
    from tests.conftest import linear_logits

    return linear_logits(params, jnp.round(x * 4) / 4)


def test_zero_gradients_are_measured_and_flagged(tmp_path, linear_model, images):
    from tests.conftest import linear_logits

    x, y = images
    healthy = engine.zero_gradients(linear_logits, linear_model[1], x, y, batch_size=8)
    masked = engine.zero_gradients(_quantised, linear_model[1], x, y, batch_size=8)
    assert (healthy["zero_examples"], healthy["zero_entries"]) == (0, 0)
    assert (masked["zero_examples"], masked["zero_entries"]) == (16, 16 * 36)
    assert healthy["entries"] == masked["entries"] == 16 * 36
    for name, rec, status in (("ok", healthy, "PASS"), ("masked", masked, "WARN")):
        item = _items(tmp_path / name, healthy_cells(), gradients={("m", "d"): rec})
        assert item["gradients"].status == status


# --- curves, LaTeX, report.md ------------------------------------------------------------------

def test_first_fooled_step_is_what_shorter_attacks_find(linear_model, images):
    """With an absolute step size, PGD-k's iterates are the first k of PGD-K's (same key), so
    PGD-k fools an example exactly when PGD-K recorded its first success at a step ≤ k: the
    steps curve from one run equals re-attacking at every k."""
    import attacks

    f, params = linear_model
    x, y = images
    y = np.asarray(jnp.argmax(f(params, jnp.asarray(x)), -1))  # all correct at x
    key, eps, k_max = jax.random.key(5), 0.12, 4

    def pgd(k):  # two restarts: the record is the earliest over them
        return attacks.PGD(steps=k, step_size=0.02, restarts=2, unroll=1)

    _, info = pgd(k_max).run(f, params, x, y, eps, key)
    first = np.asarray(info["first_fooled_step"])
    assert first.min() == -1 and first.max() >= 2  # some never, some late
    for k in range(1, k_max + 1):
        fooled = np.asarray(jnp.argmax(f(params, pgd(k)(f, params, x, y, eps, key)), -1) != y)
        np.testing.assert_array_equal(fooled, (first >= 0) & (first <= k), err_msg=f"k={k}")


def test_apgd_records_its_first_fooling_step():
    """APGD's record (the earliest over its restarts): in 0..steps, −1 exactly for the
    examples it leaves robust."""
    import attacks

    k1, k2 = jax.random.split(jax.random.key(21))  # a small tanh net: not solved in one step
    params = (jax.random.normal(k1, (36, 16)) * 0.8, jax.random.normal(k2, (16, 5)) * 1.5)

    def f(p, z):
        return jnp.tanh(z.reshape(z.shape[0], -1) @ p[0]) @ p[1]

    x = jax.random.uniform(jax.random.key(1), (48, 6, 6, 1))
    y = jnp.argmax(f(params, x), -1)
    attack = attacks.APGD(steps=6, restarts=2, unroll=1)
    x_adv, info = jax.jit(lambda z: attack.run(f, params, z, y, 0.05, jax.random.key(2)))(x)
    first = np.asarray(info["first_fooled_step"])
    fooled = np.asarray(jnp.argmax(f(params, x_adv), -1) != y)
    np.testing.assert_array_equal(first >= 0, fooled)
    assert first.max() <= 6 and len(set(first[first >= 0])) >= 4  # 0, 1, 2, 3, 5 here



def test_noise_keeps_any_fooling_draw(linear_model, images):
    """Noise with S draws: per example, fooled exactly when one of the S uniform draws
    (threat.random_init with the split keys, redrawn here) fools the model."""
    import attacks
    from attacks import threat

    f, params = linear_model
    x, y = images
    y = np.asarray(jnp.argmax(f(params, jnp.asarray(x)), -1))
    key, eps = jax.random.key(3), 1.0  # draws fool 1, 2, 3, 1 examples, 4 together
    @jax.jit
    def attack_and_redraw(z):
        x_adv = attacks.Noise(norm="l2", samples=4)(f, params, z, y, eps, key)
        draws = jax.vmap(lambda k: threat.random_init(k, z, eps, "l2"))(jax.random.split(key, 4))
        return x_adv, jax.vmap(lambda d: jnp.argmax(f(params, d), -1) != y)(draws)

    x_adv, fooled_by = (np.asarray(a) for a in attack_and_redraw(jnp.asarray(x)))
    fooled_any, first = fooled_by.any(axis=0), fooled_by[0]
    assert first.sum() < fooled_any.sum() < len(y)
    np.testing.assert_array_equal(np.asarray(jnp.argmax(f(params, x_adv), -1) != y), fooled_any)
    dist = np.asarray(threat.distance(x_adv, jnp.asarray(x), "l2"))
    assert np.all(dist <= eps * (1 + 1e-6))


def test_budget_curve_by_hand():
    """5 examples: misclassified clean (0), fooled at the start (1), after 2 steps (2), after
    3 (3), robust (4), and (5) one the scoring model gets wrong though the attack never saw it
    succeed (a random or BPDA row): robust until the last point, which is the cell's mask."""
    mask = np.array([0, 0, 0, 0, 1, 0], bool)
    clean = np.array([0, 1, 1, 1, 1, 1], bool)
    t, acc = checklist.budget_curve(mask, clean, np.array([-1, 0, 2, 3, -1, -1]), 3, "steps")
    np.testing.assert_allclose(acc, np.array([4, 4, 3, 1]) / 6 * 100)
    assert list(t) == [0, 1, 2, 3]
    _, acc = checklist.budget_curve(mask, clean, np.array([0, 1, 3, 3, 3, 3]), 3, "queries")
    np.testing.assert_allclose(acc, np.array([5, 4, 4, 1]) / 6 * 100)


def test_report_writes_checklist_plots_latex_and_report_md(tmp_path):
    from bench.reports.report import checklist_text, write_report
    from tests.test_tables import check_latex_structure

    first = np.where(prefix(20), -1, np.arange(N) % 5)
    cells = healthy_cells() + healthy_cells(defense="at")
    cells[1] = cell("m", "d", "pgd", "linf", 0.1, prefix(20), PGD, {"first_fooled_step": first})
    run = write_run(tmp_path / "r", cells)
    base = write_run(tmp_path / "base", healthy_cells(drop=12) + healthy_cells(defense="at"))
    paths = write_report(run.root, baseline=base.root)
    names = {p.name for p in paths}
    assert {"report.md", "checklist.md", "checklist.json", "intervals_linf.tex",
            "accuracy_vs_steps_pgd_linf.png", "heatmap_linf.png", "compare.md"} <= names
    md = (run.root / "report.md").read_text()
    for image in ("plots/accuracy_vs_eps_pgd_linf.png", "plots/accuracy_vs_steps_pgd_linf.png",
                  "plots/heatmap_linf.png"):
        assert f"]({image})" in md and (run.root / image).is_file()
    assert "## Sanity checklist" in md and "**Regression check against" in md and "FAIL" in md
    text = checklist_text(run.root)  # what `robustax run` and `report` print
    assert text.startswith("Sanity checklist") and len(text.splitlines()) >= 6
    # worst case of m/d at 0.1 is PGD's 20/40: 50.0 [33.8, 66.2]
    lo, hi = clopper_pearson(20, 40)
    assert f"50.0 [{100 * lo:.1f}, {100 * hi:.1f}]" in md
    tex = (run.tables / "intervals_linf.tex").read_text()
    check_latex_structure(tex)
    assert f"50.0 {{\\scriptsize [{100 * lo:.1f}, {100 * hi:.1f}]}}" in tex


def test_heatmap_eps_prefers_shared_telling_budgets(tmp_path):
    run = write_run(tmp_path / "r", healthy_cells() + [
        cell("m", "d", "pgd", "linf", 0.3, prefix(0), PGD)])
    records = report_records(run)
    assert figures_eps(records) == 0.1  # shared by both attacks; 0.1 median nearer 50%


def figures_eps(records):
    from bench.reports.figures import heatmap_eps

    return heatmap_eps(records, "linf")


# --- the runner records what the checklist reads -------------------------------------------------

SWEEP = textwrap.dedent("""
    name = "trust"
    seed = 1
    [data]
    name = "digits"
    eval_examples = 24
    train_examples = 200
    [eval]
    batch_size = 24
    [[models]]
    name = "mlp"
    width = 16
    depth = 1
    [[defenses]]
    name = "standard"
    epochs = 2
    [[defenses]]
    name = "squeeze"
    label = "1bit"
    base = "standard"
    method = "bit-depth"
    bits = 1
    [[attacks]]
    name = "pgd"
    steps = 4
    eps = [0.0, 0.05, 0.2]
""")


def test_run_records_steps_and_gradients(tmp_path):
    """The runner: per-example first fooling steps (the steps curve ends at the cell's
    accuracy and agrees with the mask), a gradient record per row: a 1-bit squeezer's is
    zero everywhere (flagged), its BPDA row's is not."""
    from bench.sweep.config import parse_config
    from bench.sweep.runner import run_sweep

    run_sweep(parse_config(tomllib.loads(SWEEP)), tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    records = report_records(run)
    r = checklist._Run(run, records)
    grads = {d: checklist.gradient_record(run, r.clean_cell["mlp", d])
             for d in ("standard", "1bit", "1bit (adaptive)")}
    assert {d: (g["zero_examples"], g["function"]) for d, g in grads.items()} == {
        "standard": (0, "model"), "1bit": (24, "model"), "1bit (adaptive)": (0,
                                                                             "adaptive stand-in")}
    assert grads["standard"]["entries"] == 24 * 64
    item = checklist.check_gradients(r, 1.0)
    assert item.status == "WARN" and "(mlp/1bit)" in item.summary
    assert [x["defense"] for x in item.rows if x["status"] == "WARN"] == ["1bit"]
    std = r.attacked[(r.attacked["defense"] == "standard") & (r.attacked["eps"] > 0)]
    for _, row in std.iterrows():
        info = run.read_info(row["cell_id"])
        first = info["first_fooled_step"]
        assert first.shape == (24,) and first.min() >= -1 and first.max() <= 4
        kind, t, acc = checklist.curve_of(r, row)
        assert kind == "steps" and list(t) == [0, 1, 2, 3, 4]
        assert acc[-1] == pytest.approx(100 * row["robust_acc"])
        assert np.all(np.diff(acc) <= 0)
        # a deterministic model: the attack's own success check agrees with the scoring
        mask, clean = run.read_mask(row["cell_id"]), r.clean("mlp", "standard")
        np.testing.assert_array_equal(mask, clean & (first < 0))
