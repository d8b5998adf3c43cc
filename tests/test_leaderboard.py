"""`robustax leaderboard` (issue 23, item 3): RobustBench model-info entries and a Markdown
leaderboard from a run directory. Run directories are written by hand (records and masks of 20
examples, correct examples a prefix unless said otherwise), so every expected number is counted
by hand; the committed results/autoattack and results/default are read, never written."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.errors import RobustaxError
from bench.reports import leaderboard as lb
from bench.reports.report import report_records
from bench.store.io import atomic_write_bytes, json_bytes, slug
from bench.store.records import RunDir
from tests.conftest import synthetic_record

ROOT = Path(__file__).resolve().parent.parent
N = 20

# RobustBench's model-info fields: robustbench/utils.py `ModelInfo` (less its corruption fields)
# and the files of model_info/cifar10/{Linf,L2}/*.json, e.g. Linf/Wang2023Better_WRN-70-16.json:
# link, name, authors, additional_data, number_forward_passes, dataset, venue, architecture,
# eps, clean_acc, reported, autoattack_acc, footnote (and, in some files, external, unreliable).
ROBUSTBENCH_FIELDS = ["link", "name", "authors", "additional_data", "number_forward_passes",
                      "dataset", "venue", "architecture", "eps", "clean_acc", "reported",
                      "autoattack_acc", "footnote"]

DEFENSES = ["standard", "pgd-at", "noise", "noise (adaptive)", "ens"]
CLEAN = {"standard": 18, "pgd-at": 17, "noise": 16, "noise (adaptive)": 16, "ens": 19}
# (attack label, norm, ε) -> correct examples per defense (a prefix; a range for standard at
# L∞ 0.1, where FGSM keeps 0-9 and PGD 5-14: the per-example worst case keeps 5-9 only).
CELLS = {
    ("fgsm", "linf", 0.1): {"standard": range(10), "pgd-at": 14, "noise": 12,
                            "noise (adaptive)": 11, "ens": 13},
    ("pgd", "linf", 0.1): {"standard": range(5, 15), "pgd-at": 13, "noise": 13,
                           "noise (adaptive)": 10, "ens": 12},
    ("fgsm", "linf", 0.2): {"standard": 6, "pgd-at": 12, "noise": 10, "noise (adaptive)": 9,
                            "ens": 11},
    ("pgd", "linf", 0.2): {"standard": 3, "pgd-at": 11, "noise": 9, "noise (adaptive)": 8,
                           "ens": 9},
    ("aa", "linf", 0.2): {"standard": 4, "pgd-at": 10, "noise": 8, "noise (adaptive)": 7,
                          "ens": 9},
    ("pgd", "linf", 0.3): {"standard": 0, "pgd-at": 7, "noise": 5, "noise (adaptive)": 4,
                           "ens": 6},
    ("pgd", "l2", 0.2): {d: 12 for d in DEFENSES},
    ("pgd", "l2", 0.5): {d: 8 for d in DEFENSES},
    ("aa", "l2", 0.5): {"standard": 2, "pgd-at": 7, "noise": 5, "noise (adaptive)": 5, "ens": 6},
}
ATTACK_OPTIONS = {"fgsm": {}, "pgd": {"steps": 20}, "aa": {"version": "standard"}}
DEFENSE_OPTIONS = {"standard": {"epochs": 3}, "pgd-at": {"eps": 0.1},
                   "noise": {"base": "pretrained", "sigma": 0.2},
                   "noise (adaptive)": {"base": "pretrained", "sigma": 0.2},
                   "ens": {"members": ["standard", "pgd-at"]}}


def mask_of(spec) -> np.ndarray:
    idx = np.arange(N)
    if isinstance(spec, range):
        return (idx >= spec.start) & (idx < spec.stop)
    return idx < spec


def make_run(root: Path, cells=CELLS) -> RunDir:
    """A run directory as `robustax run` leaves it: cells, masks, plan.json, manifest."""
    run = RunDir(root)
    ids = []
    for d in DEFENSES:
        grid = [("clean", "none", 0.0, CLEAN[d])] + [(a, n, e, k[d]) for (a, n, e), k in
                                                     cells.items()]
        for a, norm, eps, spec in grid:
            cid = f"m.{slug(d)}.{a}-{norm}.eps{eps:g}"
            opts = None if a == "clean" else {"norm": norm, **ATTACK_OPTIONS[a]}
            mask = mask_of(spec)
            run.write_cell(synthetic_record(
                run="board", data="digits", model="m", defense=d, attack=a, norm=norm, eps=eps,
                mask=mask, cell_id=cid, attack_options=opts, model_options={"width": 8},
                defense_options=DEFENSE_OPTIONS[d], config_id="cfg123",
                code_version="0.1.0+gtest", checkpoint="abc"), mask)
            ids.append(cid)
    pairs = list(dict.fromkeys((a, n) for a, n, _ in cells))
    run.write_plan({"run": "board", "models": ["m"], "defenses": DEFENSES,
                    "attacks": [list(p) for p in pairs], "cells": ids})
    return run


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("lb") / "run")


@pytest.fixture
def run(made, tmp_path):
    """A copy of the hand-made run for a test that writes into it."""
    return RunDir(shutil.copytree(made.root, tmp_path / "run"))


def board_of(run, **kw):
    return lb.build(run, run.root / "leaderboard", **kw)


def by_defense(board) -> dict[str, dict]:
    return {e["robustax"]["defense"]: e for e in board.entries.values()}


# --- the format ------------------------------------------------------------------------------

def test_entries_have_robustbench_fields_in_its_order(made):
    assert list(lb.FIELDS) == ROBUSTBENCH_FIELDS
    for e in board_of(made).entries.values():
        keys = [k for k in e if k not in ("external", "robustax")]
        assert keys == ROBUSTBENCH_FIELDS
        assert list(e)[-2:] == ["footnote", "robustax"]
        # RobustBench's types: percentages and ε as strings, forward passes an int
        assert isinstance(e["eps"], str) and isinstance(e["clean_acc"], str)
        assert isinstance(e["number_forward_passes"], int)
        assert e["additional_data"] in (False, None)
        for f in lb.UNFILLED:  # what robustax cannot know is left null, and said so
            assert e[f] is None
        assert e["robustax"]["unfilled"] == list(lb.UNFILLED)


def test_what_robustax_fills_in(made):
    e = by_defense(board_of(made))
    assert e["standard"]["dataset"] == "digits"
    assert e["standard"]["architecture"] == "m (width 8)"
    assert e["standard"]["eps"] == "0.2" and e["standard"]["clean_acc"] == "90.0"
    assert e["standard"]["additional_data"] is False  # trained here, on digits' own split
    assert e["noise"]["additional_data"] is None  # wraps loaded weights: unknown
    assert e["ens"]["number_forward_passes"] == 2 and e["pgd-at"]["number_forward_passes"] == 1
    p = e["pgd-at"]["robustax"]
    assert (p["examples"], p["correct"], p["clean_examples"]) == (N, 10, N)
    assert (p["config_id"], p["code_version"]) == ("cfg123", "0.1.0+gtest")
    assert p["checkpoint"] == "abc"
    assert p["cells"] == ["m.pgd-at.aa-linf.eps0.2"]
    assert p["clean_cell"] == "m.pgd-at.clean-none.eps0"
    assert p["ledger_head"] is None and p["manifest"] == "ok" and p["written_by"]
    assert p["ci95_percent"][0] < 50 < p["ci95_percent"][1]
    assert "20 digits test images" in e["pgd-at"]["footnote"]


@pytest.mark.parametrize("eps,norm,text", [(8 / 255, "linf", "8/255"), (0.3, "linf", "0.3"),
                                           (0.2, "linf", "0.2"), (0.5, "l2", "0.5"),
                                           (16 / 255, "l2", "0.0627451")])
def test_eps_as_robustbench_writes_it(eps, norm, text):
    assert lb.eps_text(eps, norm) == text


# --- which evaluation is picked ----------------------------------------------------------------

def test_autoattack_is_picked_where_present_even_when_another_attack_is_lower(made):
    e = by_defense(board_of(made))  # default: the largest L∞ ε with an AutoAttack cell, 0.2
    s = e["standard"]
    assert s["robustax"]["evaluation"] == "autoattack" and s["robustax"]["eps"] == 0.2
    assert s["autoattack_acc"] == "20.0" and "external" not in s  # AA 4/20; PGD's 3/20 is not it
    assert s["robustax"]["attacks"] == {"aa": {"norm": "linf", "version": "standard"}}
    assert s["robustax"]["evaluation_text"] == "AutoAttack (standard)"


def test_worst_case_where_no_autoattack_and_recorded_as_not_autoattack(made):
    e = by_defense(board_of(made, eps=0.1))
    s = e["standard"]
    assert s["robustax"]["evaluation"] == "worst-case"
    assert s["autoattack_acc"] is None and s["external"] == "25.0"  # examples 5-9 only
    assert sorted(s["robustax"]["attacks"]) == ["fgsm", "pgd"]
    assert sorted(s["robustax"]["cells"]) == ["m.standard.fgsm-linf.eps0.1",
                                              "m.standard.pgd-linf.eps0.1"]
    assert e["pgd-at"]["external"] == "65.0"  # min(14, 13) / 20
    single = by_defense(board_of(made, eps=0.3))["pgd-at"]  # only PGD at 0.3: its cell
    assert single["external"] == "35.0" and list(single["robustax"]["attacks"]) == ["pgd"]
    assert "only attack" in single["robustax"]["evaluation_text"]


def test_sorted_by_robust_accuracy_ties_in_plan_order(made):
    board = board_of(made, eps=0.1)
    assert [e["robustax"]["defense"] for e in board.entries.values()] == [
        "pgd-at", "noise", "ens", "noise (adaptive)", "standard"]  # 65, 60, 60, 50, 25
    ranks = [line.split("|")[3].strip() for line in board.markdown.splitlines()
             if line.startswith("|") and line.split("|")[1].strip().isdigit()]
    assert ranks == ["pgd-at", "noise †", "ens", "noise (adaptive) †", "standard"]
    aa = board_of(made)  # AutoAttack at 0.2: 50, 45, 40, 35, 20
    assert [e["autoattack_acc"] for e in aa.entries.values()] == [
        "50.0", "45.0", "40.0", "35.0", "20.0"]


def test_naive_and_adaptive_rows_are_paired(made):
    e = by_defense(board_of(made))
    assert e["noise"]["robustax"]["paired_row"] == "noise (adaptive)"
    assert e["noise (adaptive)"]["robustax"]["paired_row"] == "noise"
    assert e["ens"]["robustax"]["paired_row"] is None
    assert "cite the lower of the two" in e["noise"]["footnote"]


# --- choosing the budget, and refusing ---------------------------------------------------------

def test_default_budget_prefers_linf_then_the_norm_asked_for(made):
    assert (board_of(made).norm, board_of(made).eps) == ("linf", 0.2)
    board = board_of(made, norm="l2")
    assert (board.norm, board.eps) == ("l2", 0.5)
    assert by_defense(board)["pgd-at"]["autoattack_acc"] == "35.0"
    assert all(p.parts[-2] == "L2" for p in board.entries)


def test_refusals_are_one_line(made, tmp_path):
    with pytest.raises(RobustaxError, match="no AutoAttack or worst-case cell at ε 0.7"):
        board_of(made, eps=0.7)
    with pytest.raises(RobustaxError, match="under linf and l2; pass --norm"):
        board_of(made, eps=0.2)
    with pytest.raises(RobustaxError, match="ε = 0 is clean"):
        board_of(made, eps=0.0)
    no_aa = make_run(tmp_path / "no-aa", {k: v for k, v in CELLS.items() if k[0] != "aa"})
    with pytest.raises(RobustaxError, match="has no AutoAttack cell at linf or l2; pass --eps"):
        board_of(no_aa)
    assert board_of(no_aa, eps=0.2, norm="linf").entries  # worst case when asked for


def test_cli_refusal_exits_2_with_one_line_and_writes_nothing(made, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["leaderboard", str(made.root), "--out", str(out), "--eps", "0.7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustax: error: ") and err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_:  # argparse's own errors: one line, exit 2
        main(["leaderboard", str(made.root), "--eps", "one/255"])
    assert exit_.value.code == 2
    assert "invalid ε" in capsys.readouterr().err
    assert main(["leaderboard", str(tmp_path), "--out", str(out)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_ledger_head_is_in_the_provenance(run):
    head = "ab" * 32
    atomic_write_bytes(run.root / "ledger.head.json", json_bytes(
        {"key_id": "", "signature": "", "statement": {
            "head": head, "length": 7, "type": "robustax/ledger-head/v1", "updated": "now"}}))
    board = board_of(run)
    for e in board.entries.values():
        assert (e["robustax"]["ledger_head"], e["robustax"]["ledger_length"]) == (head, 7)
    assert f"ledger head `{head}` (7 entries, unsigned" in board.markdown
    atomic_write_bytes(run.root / "ledger.head.json", b"{not json")
    with pytest.raises(RobustaxError, match="is not a ledger head"):
        board_of(run)


# --- files, through the store ------------------------------------------------------------------

def test_default_out_is_written_through_the_run_manifest(run, capsys):
    assert main(["leaderboard", str(run.root)]) == 0
    out = capsys.readouterr().out
    assert "1. m / pgd-at: robust 50.0%" in out and "wrote 5 RobustBench entries" in out
    folder = run.root / "leaderboard"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["digits/Linf/m.ens.json", "digits/Linf/m.noise.json",
                     f"digits/Linf/m.{slug('noise (adaptive)')}.json",
                     "digits/Linf/m.pgd-at.json", "digits/Linf/m.standard.json",
                     "leaderboard.md"]
    for rel in files:  # every file listed in the manifest with its digest
        assert run.manifest.problem(folder / rel, (folder / rel).read_bytes()) is None
    entry = json.loads((folder / "digits/Linf/m.pgd-at.json").read_text())
    assert list(entry)[:3] == ["link", "name", "authors"]  # RobustBench's order, not sorted
    # another budget into the same folder: the entries of the earlier one are removed
    assert main(["leaderboard", str(run.root), "--norm", "l2"]) == 0
    assert not (folder / "digits/Linf").exists() or not any((folder / "digits/Linf").iterdir())
    listed = RunDir(run.root).manifest.files
    assert not any(k.startswith("leaderboard/digits/Linf/") for k in listed)
    assert (folder / "digits/L2/m.pgd-at.json").is_file()
    assert "L2 ε = 0.5" in (folder / "leaderboard.md").read_text()
    assert report_records(run) is not None  # the run still reads (cells untouched)


def test_out_elsewhere_goes_through_the_atomic_writer(made, tmp_path, monkeypatch):
    written = []

    def spy(path, data, **kw):
        written.append(Path(path))
        atomic_write_bytes(path, data, **kw)

    monkeypatch.setattr(lb, "atomic_write_bytes", spy)
    manifest = (made.root / "manifest.json").read_bytes()
    board = lb.write_leaderboard(made.root, out=tmp_path / "lb", eps=0.1)
    on_disk = {p for p in (tmp_path / "lb").rglob("*") if p.is_file()}
    assert set(written) == on_disk == set(board.paths) and len(on_disk) == 6
    assert (made.root / "manifest.json").read_bytes() == manifest  # the run is not touched
    assert not (made.root / "leaderboard").exists()


def test_out_inside_the_run_spelled_otherwise_still_goes_through_its_manifest(run, monkeypatch):
    monkeypatch.chdir(run.root.parent)  # the run relative, --out absolute (and the other way)
    lb.write_leaderboard(Path(run.root.name), out=run.root.resolve() / "lb", eps=0.1)
    lb.write_leaderboard(run.root.resolve(), out=Path(run.root.name) / "lb2", eps=0.1)
    listed = RunDir(run.root).manifest.files
    for folder in ("lb", "lb2"):
        assert f"{folder}/leaderboard.md" in listed and f"{folder}/digits/Linf/m.ens.json" in listed


def test_out_in_the_run_directorys_own_folders_is_refused(made):
    for out in (made.root, made.root / "cells", made.root / "tables" / "x"):
        with pytest.raises(RobustaxError, match="one of its own folders"):
            lb.write_leaderboard(made.root, out=out)


# --- the committed runs (read only) ----------------------------------------------------------

def test_committed_autoattack_run(tmp_path):
    board = lb.write_leaderboard(ROOT / "results/autoattack", out=tmp_path / "aa")
    assert (board.norm, board.eps) == ("linf", 0.3)
    e = by_defense(board)
    assert list(e) == ["pgd-at", "standard"]
    records = pd.read_csv(ROOT / "results/autoattack/records.csv")
    aa = records[(records["defense"] == "pgd-at") & (records["attack"] == "autoattack")
                 & (records["norm"] == "linf") & (records["eps"] == 0.3)]
    # the committed cell's count, as the entry's percent string (read, not written in here:
    # the number moves when the results are rebuilt under new numerics)
    assert float(e["pgd-at"]["autoattack_acc"]) == round(100 * aa["correct"].iloc[0] / 200, 2)
    assert e["pgd-at"]["clean_acc"] == "98.5"
    assert e["pgd-at"]["robustax"]["cells"] == list(aa["cell_id"]) and len(aa) == 1
    assert e["pgd-at"]["robustax"]["examples"] == 200
    assert e["pgd-at"]["dataset"] == "mnist5k" and e["pgd-at"]["eps"] == "0.3"
    assert (tmp_path / "aa/mnist5k/Linf/cnn.pgd-at.json").is_file()


def test_committed_default_run_worst_case_and_refusal(tmp_path):
    with pytest.raises(RobustaxError, match="no AutoAttack cell"):
        lb.write_leaderboard(ROOT / "results/default", out=tmp_path / "d")
    board = lb.write_leaderboard(ROOT / "results/default", out=tmp_path / "d", eps=0.1,
                                 norm="linf")
    records = report_records(RunDir(ROOT / "results/default"))
    worst = records[(records["attack"] == "worst-case") & (records["norm"] == "linf")
                    & (records["eps"] == 0.1)]
    expect = {(m, d): lb.pct(a) for m, d, a in zip(worst["model"], worst["defense"],
                                                    worst["robust_acc"])}
    got = {(e["robustax"]["model"], e["robustax"]["defense"]): e["external"]
           for e in board.entries.values()}
    assert got == expect and len(got) == 4
    head = json.loads((ROOT / "results/default/ledger.head.json").read_text())
    assert all(e["robustax"]["ledger_head"] == head["statement"]["head"]
               for e in board.entries.values())
    accs = [float(e["external"]) for e in board.entries.values()]
    assert accs == sorted(accs, reverse=True)


def test_committed_random_rows_say_their_draws(tmp_path):
    """The noise rows of results/defenses are scored over 10 draws: their entries say so, with
    the mean clean accuracy read from the clean cell's details; deterministic rows say nothing."""
    board = lb.write_leaderboard(ROOT / "results/defenses", out=tmp_path / "def")
    e = by_defense(board)
    records = pd.read_csv(ROOT / "results/defenses/records.csv")
    clean = records[(records["defense"] == "noise") & (records["attack"] == "clean")]
    mean = json.loads(clean["details"].iloc[0])["draw_acc_mean"]
    for row in ("noise", "noise (adaptive)"):
        assert e[row]["robustax"]["draws"] == 10
        assert e[row]["robustax"]["clean_acc_mean_over_draws"] == round(100 * mean, 2)
        assert "scored over 10 draws" in e[row]["footnote"]
        assert e[row]["robustax"]["evaluation_text"] == "AutoAttack (rand)"
    assert e["standard"]["robustax"]["draws"] is None
    assert "draws" not in e["standard"]["footnote"]
