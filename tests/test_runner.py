"""The sweep runner end to end on a tiny config: records, resume, determinism, outputs."""

import json

import numpy as np
import pandas as pd
import pytest

from bench.errors import RobustaxError
from bench.reports.report import write_report
from bench.store.records import COLUMNS, RunDir
from bench.sweep import runner
from bench.sweep.config import load_config

VOLATILE = ["seconds", "compile_seconds", "code_version"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.conftest import TINY_TOML

    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.toml").write_text(TINY_TOML)
    cfg = load_config(root / "tiny.toml")
    out = root / "run"
    records = runner.run_sweep(cfg, out, config_text=TINY_TOML, progress=False)
    return cfg, out, records


def test_records_cover_the_grid(tiny_run):
    cfg, out, records = tiny_run
    assert list(records.columns) == list(COLUMNS)
    # 1 model × 2 defenses × (clean + 2 fgsm ε + 3 pgd ε)
    assert len(records) == 2 * (1 + 2 + 3)
    assert set(records["defense"]) == {"standard", "pgd-at"}
    assert (records["examples"] == 60).all()
    np.testing.assert_allclose(records["robust_acc"], records["correct"] / records["examples"])
    assert (records["ci_low"] <= records["robust_acc"]).all()
    assert (records["robust_acc"] <= records["ci_high"]).all()
    run = RunDir(out)
    for row in records.itertuples():
        mask = run.read_mask(row.cell_id)
        assert mask.shape == (60,) and mask.dtype == bool and mask.sum() == row.correct


def test_eps_zero_equals_clean_in_a_sweep(tiny_run):
    _, _, r = tiny_run
    for defense, g in r.groupby("defense"):
        clean = g[g["attack"] == "clean"]["correct"].item()
        assert (g[g["eps"] == 0.0]["correct"] == clean).all()


def test_run_directory_contents(tiny_run):
    cfg, out, records = tiny_run
    assert json.loads((out / "config.json").read_text())["config_id"] == cfg.config_id()
    env = json.loads((out / "environment.json").read_text())
    assert env[0]["packages"]["jax"] and env[0]["devices"]
    assert (out / "config.toml").read_text().startswith("\nname = \"tiny\"")
    assert len(list((out / "checkpoints").glob("*.safetensors"))) == 2
    frame = pd.read_csv(out / "records.csv")
    assert len(frame) == len(records)
    paths = write_report(out)
    names = {p.name for p in paths}
    assert {"robust_accuracy.csv", "robust_accuracy.md", "robust_accuracy.tex",
            "robust_accuracy_pgd_linf.md", "robust_accuracy_worst-case_linf.md",
            "robust_accuracy_linf.tex", "summary.txt",
            "accuracy_vs_eps_pgd_linf.png", "accuracy_vs_eps_fgsm_linf.pdf"} <= names
    md = (out / "tables" / "robust_accuracy_pgd_linf.md").read_text()
    assert "| mlp" in md and "ε=0.2" in md and "clean" in md and "ε=0 " not in md
    tex = (out / "tables" / "robust_accuracy_linf.tex").read_text()
    assert "\\begin{tabular}" in tex and "$\\varepsilon$" in tex
    table = pd.read_csv(out / "tables" / "robust_accuracy.csv", index_col=[0, 1])
    clean = records[(records["attack"] == "clean") & (records["defense"] == "standard")]
    assert table.loc[("mlp", "standard"), "clean"] == pytest.approx(100 * clean["robust_acc"].item(), abs=0.05)


def test_worst_case_over_attacks_per_example(tiny_run):
    """The worst-case column counts an example robust only if FGSM and PGD both failed on it."""
    from bench.reports.report import WORST, worst_case

    _, out, records = tiny_run
    run = RunDir(out)
    write_report(out)
    worst = worst_case(records, run)
    assert set(worst["eps"]) == {0.0, 0.1}  # the budgets both attacks ran at
    for row in worst.itertuples():
        cells = records[(records["defense"] == row.defense) & (records["eps"] == row.eps)
                        & records["attack"].isin(["fgsm", "pgd"])]
        both = run.read_mask(cells.iloc[0]["cell_id"]) & run.read_mask(cells.iloc[1]["cell_id"])
        assert row.attack == WORST and row.correct == both.sum()
        assert row.correct <= cells["correct"].min()
    table = pd.read_csv(out / "tables" / "robust_accuracy.csv", index_col=[0, 1])
    assert "worst-case linf ε=0.1" in table.columns


def test_same_seed_identical_records(tiny_run, tmp_path):
    cfg, _, first = tiny_run
    second = runner.run_sweep(cfg, tmp_path / "again", progress=False)
    pd.testing.assert_frame_equal(first.drop(columns=VOLATILE), second.drop(columns=VOLATILE))


def test_rerun_skips_finished_cells_and_training(tiny_run, monkeypatch):
    cfg, out, first = tiny_run
    from bench.sweep import engine
    from defenses import PGDAT, Standard

    def boom(*a, **k):
        raise AssertionError("recomputed a finished cell")

    monkeypatch.setattr(engine, "attack_correct", boom)
    monkeypatch.setattr(engine, "clean_correct", boom)
    monkeypatch.setattr(Standard, "train", boom)
    monkeypatch.setattr(PGDAT, "train", boom)
    again = runner.run_sweep(cfg, out, progress=False)
    pd.testing.assert_frame_equal(first, again)


def test_checkpoints_are_reused_when_cells_are_missing(tiny_run, tmp_path, monkeypatch):
    """Delete every cell but keep the checkpoints: the rerun evaluates again, never trains."""
    import shutil

    from defenses import PGDAT, Standard

    cfg, out, first = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "cells")

    def boom(*a, **k):
        raise AssertionError("retrained although the checkpoint exists")

    monkeypatch.setattr(Standard, "train", boom)
    monkeypatch.setattr(PGDAT, "train", boom)
    again = runner.run_sweep(cfg, copy, progress=False)
    pd.testing.assert_frame_equal(first.drop(columns=VOLATILE), again.drop(columns=VOLATILE))


def test_interrupted_sweep_resumes(tiny_run, tmp_path, monkeypatch):
    """Kill the sweep after 4 cells; the rerun computes only the rest, reusing the checkpoint,
    and the final records equal an uninterrupted run."""
    cfg, _, reference = tiny_run
    out = tmp_path / "killed"
    real_write = RunDir.write_cell
    written = []

    def write_then_die(self, record, mask):
        real_write(self, record, mask)
        written.append(record["cell_id"])
        if len(written) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_cell", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(cfg, out, progress=False)
    monkeypatch.setattr(RunDir, "write_cell", real_write)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(before) == 4

    from bench.sweep import engine
    calls = []
    real_attack = engine.attack_correct
    monkeypatch.setattr(engine, "attack_correct",
                        lambda *a, **k: calls.append(a[5]) or real_attack(*a, **k))
    resumed = runner.run_sweep(cfg, out, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert all(after[name] == t for name, t in before.items())  # not rewritten
    assert len(after) == len(reference)
    # The first model × defense had clean + fgsm(2) + 1 pgd ε done: only 2 pgd ε remain.
    assert calls[0] == [0.1, 0.2]
    pd.testing.assert_frame_equal(reference.drop(columns=VOLATILE), resumed.drop(columns=VOLATILE))


def test_changed_config_reuses_cells_and_reports_current_grid(tiny_run, tmp_path, monkeypatch):
    """Add an ε and drop an attack, rerun into the same directory: only the new cell is
    computed, records and report cover the current grid, the old config is kept in history."""
    import shutil
    import tomllib

    from bench.sweep import engine
    from bench.sweep.config import parse_config
    from tests.conftest import TINY_TOML

    _, out, first = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    raw = tomllib.loads(TINY_TOML)
    raw["attacks"] = [raw["attacks"][1]]
    raw["attacks"][0]["eps"] = [0.0, 0.1, 0.2, 0.3]
    calls = []
    real = engine.attack_correct
    monkeypatch.setattr(engine, "attack_correct", lambda *a, **k: calls.append(a[5]) or real(*a, **k))
    records = runner.run_sweep(parse_config(raw), copy, progress=False)
    assert calls == [[0.3], [0.3]]  # one new cell per defense
    assert set(records["attack"]) == {"clean", "pgd"} and len(records) == 2 * (1 + 4)
    kept = first[first["attack"] != "fgsm"]
    pd.testing.assert_frame_equal(
        records[records["eps"] != 0.3].reset_index(drop=True), kept.reset_index(drop=True))
    state = json.loads((copy / "config.json").read_text())
    assert len(state["history"]) == 1 and state["history"][0]["config"]["attacks"][0]["name"] == "fgsm"
    write_report(copy)
    assert "fgsm" not in (copy / "tables" / "robust_accuracy.md").read_text()


def test_corrupt_checkpoint_is_one_line_error(tiny_run, tmp_path):
    import shutil

    cfg, out, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "cells")
    ckpt = sorted((copy / "checkpoints").glob("*.safetensors"))[0]
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(RobustaxError, match="is damaged: not a readable safetensors.*delete it to retrain") as e:
        runner.run_sweep(cfg, copy, progress=False)
    assert "\n" not in str(e.value)


def test_tfds_sweep_under_mock_data(tmp_path):
    """One-step smoke run of the whole sweep on a TFDS data set (mocked, offline)."""
    import tomllib

    import tensorflow_datasets as tfds

    from bench.sweep.config import parse_config
    from tests.conftest import TINY_TOML

    raw = tomllib.loads(TINY_TOML)
    raw["data"] = {"name": "tfds:mnist", "eval_examples": 8, "data_dir": str(tmp_path / "tfds")}
    raw["defenses"] = [{"name": "standard", "epochs": 1, "batch_size": 16}]
    with tfds.testing.mock_data(num_examples=32):
        records = runner.run_sweep(parse_config(raw), tmp_path / "run", progress=False)
    assert len(records) == 1 + 2 + 3 and (records["examples"] == 8).all()
    assert (records["data"] == "tfds:mnist").all()


def test_missing_tfds_data_is_one_line_error(tmp_path, capsys):
    from bench.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
        [data]
        name = "tfds:cifar10"
        data_dir = "{tmp_path / 'none'}"
        [[models]]
        name = "mlp"
        [[defenses]]
        name = "standard"
        [[attacks]]
        name = "fgsm"
        eps = [0.1]
    """.replace("        ", ""))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not prepared" in err and "tfds build cifar10" in err


MULTI_DEVICE = r"""
import json, sys
from bench import xla; xla.configure()
import jax, numpy as np
import attacks
from bench.sweep import engine
from bench.sweep.data import load_dataset
from models import MLP, init_variables, make_logits_fn
assert jax.device_count() == 8, jax.devices()
d = load_dataset("digits")
m = MLP(num_classes=10, mean=d.mean, std=d.std, width=16, depth=1)
p = init_variables(m, jax.random.key(0), d.image_shape)
x, y = d.x_test[:50], d.y_test[:50]
masks, _, _ = engine.attack_correct(attacks.PGD(steps=3), make_logits_fn(m), p, x, y, [0.05, 0.1],
                                    jax.random.key(1), batch_size=20)
print(json.dumps(masks.astype(int).tolist()))
"""


def test_sharded_over_eight_cpu_devices_matches_one(tmp_path):
    """The batch axis is sharded over all devices (8 forced CPU devices here, batch 20 padded
    to 24); per-example results equal a single-device run."""
    import os
    import subprocess
    import sys

    import jax

    import attacks
    from bench.sweep import engine
    from bench.sweep.data import load_dataset
    from models import MLP, init_variables, make_logits_fn

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run([sys.executable, "-c", MULTI_DEVICE], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sharded = np.array(json.loads(out.stdout.strip().splitlines()[-1]), dtype=bool)
    d = load_dataset("digits")
    m = MLP(num_classes=10, mean=d.mean, std=d.std, width=16, depth=1)
    p = init_variables(m, jax.random.key(0), d.image_shape)
    single, _, _ = engine.attack_correct(attacks.PGD(steps=3), make_logits_fn(m), p,
                                         d.x_test[:50], d.y_test[:50], [0.05, 0.1],
                                         jax.random.key(1), batch_size=50)
    np.testing.assert_array_equal(sharded, single)


def test_sweep_runs_every_registered_model(tmp_path):
    """Every registered model (tiny variants, BatchNorm ones included) through the whole
    sweep: train, checkpoint, attack, records; ε = 0 equals clean for each."""
    from bench.sweep.config import parse_config
    from bench.sweep.registry import MODELS

    tiny = {"mlp": {"width": 8, "depth": 1}, "cnn": {"width": 4, "dense": 8},
            "preact-resnet18": {"width": 4, "blocks": [1, 1, 1, 1]},
            "wide-resnet": {"depth": 10, "widen": 1},
            "resnet18": {"width": 4, "blocks": [1, 1, 1, 1]},
            "dm-wide-resnet": {"depth": 10, "widen": 1, "activation": "swish"}}
    assert set(tiny) == set(MODELS), "add a tiny variant of the new model here"
    raw = {"name": "models", "data": {"name": "digits", "eval_examples": 20, "train_examples": 64},
           "models": [{"name": n, **o} for n, o in tiny.items()],
           "defenses": [{"name": "standard", "epochs": 1, "batch_size": 32}],
           "attacks": [{"name": "fgsm", "eps": [0.0, 0.1]}]}
    records = runner.run_sweep(parse_config(raw), tmp_path, progress=False)
    assert set(records["model"]) == set(tiny) and len(records) == 3 * len(tiny)
    for model, g in records.groupby("model"):
        assert g[g["eps"] == 0.0]["correct"].nunique() == 1  # clean row and FGSM at ε = 0
