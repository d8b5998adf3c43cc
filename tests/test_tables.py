"""Tables for people (issue 14): the terminal summary, Markdown per attack × norm, LaTeX per
norm, the wide CSV, and the ε = 0 check. Run directories are written by hand (records and
per-example masks of 20 examples), so the expected numbers are counted on the fingers."""

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.errors import RobustaxError
from bench.reports import tables
from bench.reports.report import report_records, summary, table_order, write_tables
from bench.store.records import RunDir
from tests.conftest import synthetic_record

N = 20
MODELS, DEFENSES = ["mlp", "cnn"], ["standard", "pgd-at"]
ATTACKS = [("fgsm", "linf", [0.0, 0.1, 0.2]), ("pgd", "linf", [0.0, 0.1, 0.2, 0.3]),
           ("pgd", "l2", [0.0, 0.5])]
# correct examples (a prefix of the 20) per (model, defense): clean, then per attack and ε > 0
CLEAN_K = {("mlp", "standard"): 18, ("mlp", "pgd-at"): 19, ("cnn", "standard"): 17,
           ("cnn", "pgd-at"): 19}
K = {("fgsm", "linf"): {("mlp", "standard"): [12, 6], ("mlp", "pgd-at"): [16, 12],
                        ("cnn", "standard"): [11, 5], ("cnn", "pgd-at"): [17, 13]},
     ("pgd", "linf"): {("mlp", "standard"): [10, 4, 0], ("mlp", "pgd-at"): [15, 10, 6],
                       ("cnn", "standard"): [9, 3, 0], ("cnn", "pgd-at"): [14, 11, 5]},
     ("pgd", "l2"): {("mlp", "standard"): [8], ("mlp", "pgd-at"): [14],
                     ("cnn", "standard"): [7], ("cnn", "pgd-at"): [16]}}
# mlp / standard, L∞ 0.1: FGSM and PGD each keep 10 examples, but different ones (0-9 and 5-14):
# the per-example worst case keeps only 5-9, 25%, below both attacks.
SPECIAL = {("mlp", "standard", "fgsm", "linf", 0.1): np.arange(N) < 10,
           ("mlp", "standard", "pgd", "linf", 0.1): (np.arange(N) >= 5) & (np.arange(N) < 15)}


def make_run(root, models=MODELS, defenses=DEFENSES, attacks=ATTACKS, clean_k=None, k=None,
             special=None, data="digits", n=N):
    """A run directory with plan.json, cells/ and masks/, as `robustax run` leaves it."""
    clean_k = CLEAN_K if clean_k is None else clean_k
    k = K if k is None else k
    special = SPECIAL if special is None else special
    run = RunDir(root)
    cells = []
    for m in models:
        for d in defenses:
            clean = np.arange(n) < clean_k[m, d]
            grid = [("clean", "none", 0.0, clean)]
            for a, norm, eps in attacks:
                ks = iter(k[a, norm][m, d])
                for e in eps:
                    if e == 0:
                        mask = clean
                    else:
                        mask = special.get((m, d, a, norm, e), np.arange(n) < next(ks))
                    grid.append((a, norm, e, mask))
            for a, norm, e, mask in grid:
                cid = f"{m}.{d}.{a}-{norm}.eps{e:g}"
                opts = None if a == "clean" else {"norm": norm, **(
                    {"steps": 20} if a == "pgd" else {})}
                run.write_cell(synthetic_record(run="t", data=data, model=m, defense=d, attack=a,
                                           norm=norm, eps=e, mask=mask, seconds=0.0,
                                           compile_seconds=0.0, seed=0, cell_id=cid,
                                           attack_options=opts), mask)
                cells.append(cid)
    run.write_plan({"models": list(models), "defenses": list(defenses),
                    "attacks": [[a, norm] for a, norm, _ in attacks], "cells": cells})
    return run


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The hand-made run with its tables written (shared: tests only read it)."""
    run = make_run(tmp_path_factory.mktemp("tables") / "run")
    records = report_records(run)
    write_tables(records, run, table_order(records, run))
    return run, records


@pytest.fixture
def run(written, tmp_path):
    """A copy of the hand-made run for a test that changes it."""
    return RunDir(shutil.copytree(written[0].root, tmp_path / "run"))


# --- ε = 0 ------------------------------------------------------------------------------------

def test_eps_zero_is_shown_once_as_clean(written):
    run, records = written
    csv = pd.read_csv(run.tables / "robust_accuracy.csv", index_col=[0, 1])
    assert "clean" in csv.columns and not [c for c in csv.columns if c.endswith("ε=0")]
    for path in run.tables.glob("*.md"):
        assert "ε=0 " not in path.read_text() and "ε=0|" not in path.read_text().replace(" ", "")
    for path in run.tables.glob("robust_accuracy_*.tex"):
        assert not re.search(r"& 0 &|& 0 \\\\", path.read_text())
    assert "ε=0 " not in summary(run.root)


def test_eps_zero_that_differs_from_clean_is_an_error(run, capsys):
    """Two examples swapped at ε = 0: the same count as clean, still caught per example."""
    cid = "cnn.pgd-at.pgd-linf.eps0"
    mask = run.read_mask(cid).copy()
    mask[0], mask[-1] = False, True  # 19 correct either way
    record = __import__("json").loads(run.cell_path(cid).read_text())
    run.write_cell(record, mask)
    with pytest.raises(RobustaxError, match=r"pgd linf at ε = 0 scores 2 of 20 .*moved points"):
        report_records(run)
    assert main(["report", str(run.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustax: error: cnn / pgd-at: pgd linf at ε = 0")
    assert err.count("\n") == 1


def test_eps_zero_check_without_masks_compares_counts(run):
    records = run.read_records()
    tables.check_eps_zero(records)
    bad = records.copy()
    bad.loc[(bad["attack"] == "fgsm") & (bad["eps"] == 0) & (bad["model"] == "mlp"), "correct"] -= 1
    with pytest.raises(RobustaxError, match="fgsm linf at ε = 0"):
        tables.check_eps_zero(bad)


# --- the terminal summary ---------------------------------------------------------------------

def test_summary_blocks_per_norm_with_worst_case_and_strongest_attack(written):
    run, records = written
    text = summary(run.root)
    assert all(len(line) <= 100 for line in text.splitlines())
    linf = text[text.index("L∞: worst case per example over fgsm, pgd"):text.index("L2: pgd")]
    rows = [line for line in linf.splitlines()[3:] if line.strip()]
    assert [r[:19].split() for r in rows] == [["mlp", "standard"], ["pgd-at"], ["cnn", "standard"],
                                              ["pgd-at"]]
    # hand-computed: both attacks keep 10 of 20, the worst case 5: 25.0, fgsm first on the tie, +
    assert re.search(r"90\.0\s+25\.0 fgsm\+\s+20\.0 pgd\s+0\.0 pgd$", rows[0])
    assert re.search(r"95\.0\s+75\.0 pgd\s+50\.0 pgd\s+30\.0 pgd$", rows[1])
    assert "ε=0.1" in linf and "ε=0.3" in linf
    l2 = text[text.index("L2: pgd"):]
    assert re.search(r"mlp\s+standard\s+90\.0\s+40\.0\n", l2)  # one attack: no name per cell
    assert (run.tables / "summary.txt").read_text() == tables.terminal_summary(
        records, table_order(records, run), 100)


def test_summary_fits_narrow_terminals_and_cuts_labels_only_there(tmp_path):
    """Long labels and 12 budgets: every line fits; ε columns split into stacked tables; the
    Markdown keeps the full labels."""
    models, defenses = ["wide-resnet-28-10-extra-long"], ["squeeze-bits (adaptive)", "standard"]
    eps = [0.0] + [round(0.025 * i, 3) for i in range(1, 13)]
    attacks = [("autoattack-plus-version", "linf", eps), ("pgd-with-restarts", "linf", eps)]
    ck = {(m, d): 19 for m in models for d in defenses}
    k = {(a, n): {(m, d): list(range(18, 6, -1)) for m in models for d in defenses}
         for a, n, _ in attacks}
    run = make_run(tmp_path / "r", models, defenses, attacks, ck, k, special={})
    for width in (100, 80, 60):
        text = summary(run.root, width=width)
        assert max(len(line) for line in text.splitlines()) <= width, text
        for e in eps[1:]:
            assert f"ε={e:g}" in text
    assert "…" in summary(run.root, width=60)
    assert tables.shorten("squeeze-median (adaptive)", 12) == "↳ adaptive"
    assert tables.shorten("squeeze-median", 12) == "squeeze-med…"
    records = report_records(run)
    write_tables(records, run, table_order(records, run))
    md = (run.tables / "robust_accuracy.md").read_text()
    assert "wide-resnet-28-10-extra-long" in md and "squeeze-bits (adaptive)" in md


def test_cli_report_prints_the_summary(run, capsys, monkeypatch):
    from bench.reports import report

    monkeypatch.setattr(report, "write_plots", lambda records, run, order: [])  # tables are the point
    assert main(["report", str(run.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Robust accuracy (%) on digits, 20 test images")
    assert "L∞: worst case per example over fgsm, pgd" in out and "L2: pgd" in out
    assert all(len(line) <= 100 for line in out.split("\nwrote ")[0].splitlines())
    assert f"files to {run.tables}/" in out


# --- Markdown and CSV -------------------------------------------------------------------------

def test_markdown_one_table_per_attack_and_norm(written):
    run, records = written
    names = {p.name for p in run.tables.glob("*.md")}
    assert names == {"robust_accuracy.md", "robust_accuracy_worst-case_linf.md",
                     "robust_accuracy_fgsm_linf.md", "robust_accuracy_pgd_linf.md",
                     "robust_accuracy_pgd_l2.md"}  # no worst case where one attack ran
    pgd = (run.tables / "robust_accuracy_pgd_linf.md").read_text()
    assert pgd.startswith("### pgd (20 steps), L∞\n")
    table = [line for line in pgd.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == [
        "model", "defense", "clean", "ε=0.1", "ε=0.2", "ε=0.3"]
    assert len(table) == 2 + 4
    assert [c.strip() for c in table[2].strip("|").split("|")] == [
        "mlp", "standard", "90.0", "50.0", "20.0", "0.0"]
    worst = (run.tables / "robust_accuracy_worst-case_linf.md").read_text()
    assert "fgsm and pgd (20 steps) (ε = 0.3: pgd only)" in worst
    assert re.search(r"\| mlp +\| standard +\| +90\.0 \| +25\.0 \| +20\.0 \| +0\.0 \|", worst)
    index = (run.tables / "robust_accuracy.md").read_text()
    assert index.index("## L∞") < index.index("### Worst case") < index.index("## L2")
    for name in names - {"robust_accuracy.md"}:
        assert (run.tables / name).read_text() in index


def test_wide_csv_has_every_number(written):
    run, _ = written
    csv = pd.read_csv(run.tables / "robust_accuracy.csv", index_col=[0, 1])
    assert list(csv.columns) == [
        "clean", "fgsm linf ε=0.1", "fgsm linf ε=0.2", "pgd linf ε=0.1", "pgd linf ε=0.2",
        "pgd linf ε=0.3", "pgd l2 ε=0.5", "worst-case linf ε=0.1", "worst-case linf ε=0.2"]
    assert list(csv.index) == [(m, d) for m in MODELS for d in DEFENSES]
    assert csv.loc[("mlp", "standard"), "worst-case linf ε=0.1"] == 25.0
    assert csv.loc[("cnn", "pgd-at"), "pgd l2 ε=0.5"] == 80.0


def test_stale_table_files_of_an_earlier_grid_are_removed(run):
    records = report_records(run)
    (run.tables / "robust_accuracy_apgd_linf.md").write_text("old")
    (run.tables / "notes.md").write_text("mine")
    write_tables(records, run, table_order(records, run))
    assert not (run.tables / "robust_accuracy_apgd_linf.md").exists()
    assert (run.tables / "notes.md").read_text() == "mine"


# --- LaTeX ------------------------------------------------------------------------------------

def _cells(row: str) -> int:
    """Columns a tabular row spans (\\multicolumn counted by its span)."""
    parts = re.split(r"(?<!\\)&", row)
    return sum(int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", p)) else 1
               for p in parts)


def check_latex_structure(tex: str) -> list[str]:
    """Balanced environments; every row spans exactly the columns of its alignment spec.
    Returns the tabular bodies."""
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"unbalanced \\end{{{env}}}"
    assert not stack, f"unclosed {stack}"
    bodies = re.findall(r"\\begin\{tabular\}\{([lrc]+)\}(.*?)\\end\{tabular\}", tex, re.S)
    assert bodies
    for spec, body in bodies:
        rows = [r for r in body.split("\\\\")
                if r.strip() and not re.fullmatch(r"\s*\\(top|mid|bottom)rule\s*", r)]
        rows = [re.sub(r"\\(top|mid|bottom)rule", "", r) for r in rows]
        for row in rows:
            if row.strip():
                assert _cells(row) == len(spec), (spec, row)
        assert "\\toprule" in body and "\\midrule" in body and "\\bottomrule" in body
    return [b for _, b in bodies]


def test_latex_one_booktabs_table_per_norm(written):
    run, _ = written
    assert {p.name for p in run.tables.glob("*.tex")} == {
        "robust_accuracy.tex", "robust_accuracy_linf.tex", "robust_accuracy_l2.tex"}
    tex = (run.tables / "robust_accuracy_linf.tex").read_text()
    (body,) = check_latex_structure(tex)
    assert tex.count("\\begin{table}") == 1
    assert "\\multirow[t]{2}{*}{mlp}" in body and "\\multirow[t]{2}{*}{cnn}" in body
    assert ("\\multicolumn{3}{c}{$\\varepsilon$ ($\\ell_\\infty$)} \\\\\n"
            "\\cmidrule(lr){4-6}\n") in body
    assert re.search(r"clean & 0\.1 & 0\.2 & 0\.3", body)
    caption = re.search(r"\\caption\{(.*?)\}\n", tex).group(1)
    assert "digits (20 test images)" in caption
    assert "worst case per example over fgsm and pgd (20 steps)" in caption
    assert "$\\varepsilon$ = 0.3: pgd only" in caption
    assert "\\label{tab:robust-accuracy-linf}" in tex
    all_tex = (run.tables / "robust_accuracy.tex").read_text()
    assert tex in all_tex and (run.tables / "robust_accuracy_l2.tex").read_text() in all_tex
    check_latex_structure(all_tex)


def test_latex_best_value_per_column_in_bold(written):
    """Hand-computed worst cases: clean 90/95/85/95, ε=0.1 25/75/45/70, ε=0.2 20/50/15/55,
    ε=0.3 0/30/0/25; the best of each column is bold (ties both), nothing else is."""
    run, _ = written
    (body,) = check_latex_structure((run.tables / "robust_accuracy_linf.tex").read_text())
    rows = [r for r in body.split("\\\\") if "standard" in r or "pgd-at" in r]
    cells = [[c.strip() for c in re.split(r"(?<!\\)&", r)][2:] for r in rows]
    assert cells == [["90.0", "25.0", "20.0", "0.0"],
                     ["\\textbf{95.0}", "\\textbf{75.0}", "50.0", "\\textbf{30.0}"],
                     ["85.0", "45.0", "15.0", "0.0"],
                     ["\\textbf{95.0}", "70.0", "\\textbf{55.0}", "25.0"]]


def test_latex_no_bold_where_a_column_ties_everywhere():
    values = pd.DataFrame({"clean": [97.0, 96.0], 0.3: [0.0, 0.0]})
    assert tables.best_mask(values).to_numpy().tolist() == [[True, False], [False, False]]


def test_latex_intervals_escaping_and_splitting(tmp_path):
    """± half-widths on request; labels and data names escaped; 12 budgets → two tables of 6."""
    eps = [0.0] + [round(0.025 * i, 3) for i in range(1, 13)]
    models, defenses = ["my_net"], ["pgd-at", "100%"]
    run = make_run(tmp_path / "r", models, defenses, [("pgd", "l2", eps)],
                   {(m, d): 19 for m in models for d in defenses},
                   {("pgd", "l2"): {(m, d): list(range(18, 6, -1)) for m in models
                                    for d in defenses}},
                   special={}, data="tfds:fashion_mnist")
    records = report_records(run)
    order = table_order(records, run)
    tex = tables.latex_norm(records, order, "l2", intervals="pm")
    bodies = check_latex_structure(tex)
    assert len(bodies) == 2 and tex.count("\\begin{table}") == 2
    assert "Part 1 of 2" in tex and "tab:robust-accuracy-l2-2" in tex
    specs = re.findall(r"\\begin\{tabular\}\{([lrc]+)\}", tex)
    assert specs == ["ll" + "r" * 7] * 2  # clean + 6 budgets each
    assert "my\\_net" in tex and "100\\%" in tex and "tfds:fashion\\_mnist" in tex
    assert re.search(r"95\.0 \{\\scriptsize \$\\pm\$\d+\.\d\}", tex)
    assert "Attack: pgd (20 steps)." in tex
    plain = tables.latex_norm(records, order, "l2", intervals=None)
    assert "$\\pm$" not in plain and "Clopper" not in plain
    with pytest.raises(ValueError, match="intervals"):
        tables.latex_norm(records, order, "l2", intervals="both")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX engine installed")
def test_latex_tables_compile(written, tmp_path):
    run, _ = written
    for path in sorted(run.tables.glob("robust_accuracy*.tex")):
        doc = tmp_path / f"{path.stem}_doc.tex"
        doc.write_text(tables.standalone_document(path.read_text()))
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                                 doc.name], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout[-2000:]
        assert (tmp_path / f"{path.stem}_doc.pdf").is_file()


def test_a_grid_with_only_eps_zero_still_reports_clean_accuracy(tmp_path):
    run = make_run(tmp_path / "r", attacks=[("pgd", "linf", [0.0])],
                   k={("pgd", "linf"): {key: [] for key in CLEAN_K}}, special={})
    records = report_records(run)
    write_tables(records, run, table_order(records, run))
    text = (run.tables / "summary.txt").read_text()
    assert re.search(r"mlp\s+standard\s+90\.0\n", text) and "ε=" not in text
    assert not list(run.tables.glob("robust_accuracy_*.tex"))
