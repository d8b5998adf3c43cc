"""robustax speed's outputs and the XLA flags applied on import (no timing asserted)."""

import os
import subprocess
import sys

import pandas as pd

from attacks import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flags_appended_never_overriding_and_opt_out():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_flags.configure(env)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                        *xla_flags.CPU_FLAGS]
    assert not xla_flags.configure(env)  # once
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    xla_flags.configure(mine)
    assert mine["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"  # the user's wins
    off = {"ROBUSTAX_XLA_DEFAULTS": "0"}
    assert not xla_flags.configure(off) and "XLA_FLAGS" not in off


def test_import_bench_sets_the_flags_without_importing_jax():
    code = ("import os, sys, bench; print('jax' in sys.modules); "
            "print(os.environ.get('XLA_FLAGS'))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ROBUSTAX_XLA_DEFAULTS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**env, "PYTHONPATH": ROOT}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["False", " ".join(xla_flags.CPU_FLAGS)]


def test_write_suite_csv_and_markdown(tmp_path):
    from bench.pytorch.speed import write_suite

    rows = [{"model": "cnn", "path": "model", "measure": "forward + input gradient", "k": 1,
             "seconds": 0.1, "compile_seconds": None, "unit": "", "ratio_to_unit": None},
            {"model": "cnn", "path": "python api", "measure": "PGD-20", "k": 20, "seconds": 1.6,
             "compile_seconds": 2.0, "unit": "(fwd+grad)", "ratio_to_unit": 0.8}]
    paths = write_suite(rows, tmp_path / "out", {"device": "test cpu"})
    frame = pd.read_csv(paths[0])
    assert list(frame["seconds"]) == [0.1, 1.6] and frame["ratio_to_unit"].iloc[1] == 0.8
    md = paths[1].read_text()
    assert "- device: test cpu" in md and "| PGD-20" in md and "1600" in md and "nan" not in md


def test_speed_cli_rejects_unknown_models(capsys):
    from bench.cli import main

    assert main(["speed", "--models", "resnet"]) == 2
    assert "choose from cnn, user-cnn" in capsys.readouterr().err


def test_layer_profile_accounts_for_the_whole_model(tmp_path):
    """`robustax speed --layers`: one row per convolution of the cnn (with PyTorch's times
    when torch is installed), their sum, and the rest of the model's forward + input
    gradient; written as CSV and Markdown (tiny batch, no timing asserted)."""
    import importlib.util

    import pandas as pd

    from bench.pytorch.speed import CNN_CONVS, layer_profile, write_layers

    torch_too = importlib.util.find_spec("torch") is not None
    rows = layer_profile(batch=2, repeats=1, torch_too=torch_too, log=lambda s: None)
    convs = rows[:len(CNN_CONVS)]
    total, whole, rest = rows[len(CNN_CONVS):]
    assert [r["layer"].split()[0] for r in convs] == [c[0] for c in CNN_CONVS]
    assert convs[1]["gflop"] == 2 * 2 * 28 * 28 * 9 * 32 * 32 / 1e9
    for col in ["xla_fwd_ms", "xla_grad_ms"] + (["torch_fwd_ms", "torch_grad_ms"] if torch_too else []):
        assert total[col] == sum(r[col] for r in convs) and all(r[col] > 0 for r in convs)
    assert rest["xla_total_ms"] == whole["xla_total_ms"] - total["xla_fwd_ms"] - total["xla_grad_ms"]
    csv_path, md_path = write_layers(rows, tmp_path, {"device": "test"})
    assert len(pd.read_csv(csv_path)) == len(rows) and "all convolutions" in md_path.read_text()
