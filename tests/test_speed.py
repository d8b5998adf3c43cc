"""robustax speed's outputs and the XLA flags applied on import (no timing asserted)."""

import os
import subprocess
import sys

import pandas as pd
import pytest

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
    assert list(frame["device"]) == ["test cpu"] * 2  # the meta, as constant columns
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
    meta = {"device": "test", "cpu_avx512": "no", "xla_isa_cap": "AVX2"}
    csv_path, md_path = write_layers(rows, tmp_path, meta)
    frame, md = pd.read_csv(csv_path), md_path.read_text()
    assert len(frame) == len(rows) and "all convolutions" in md
    assert set(frame["xla_isa_cap"]) == {"AVX2"} and "- cpu_avx512: no" in md


def test_isa_env_caps_both_frameworks_and_keeps_the_other_xla_flags():
    """`robustax speed --isa`: the variables each cap sets (pure, no timing)."""
    from bench.pytorch.speed import _CAPS, caps, isa_env

    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=AVX512 "
                        "--xla_cpu_experimental_ynn_fusion_type="}
    assert isa_env("native", env) == {}
    assert isa_env("avx2", env) == {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                     "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_max_isa=AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    avx = isa_env("avx", {})
    assert avx == {"XLA_FLAGS": "--xla_cpu_max_isa=AVX", "ONEDNN_MAX_CPU_ISA": "AVX",
                   "ATEN_CPU_CAPABILITY": "default"}
    assert caps({**env, **isa_env("avx2", env)}) == _CAPS["avx2"] and caps(avx) == _CAPS["avx"]
    assert caps({}) == {"xla": None, "onednn": None, "aten": None}


def test_isa_plan_runs_capped_in_a_fresh_process_and_refuses_what_cannot_hold():
    from bench.errors import RobustaxError
    from bench.pytorch.speed import _CHILD, isa_env, plan_isa

    flags = {"avx", "avx2", "avx512f"}
    assert plan_isa("native", {}, None, "aarch64") is None  # native: here, anywhere
    assert plan_isa("avx2", {"XLA_FLAGS": "--a"}, flags, "x86_64") == isa_env("avx2",
                                                                              {"XLA_FLAGS": "--a"})
    assert plan_isa("avx", {}, None, "x86_64") == isa_env("avx", {})  # flags unknown: try
    child = {**isa_env("avx2", {}), _CHILD: "/tmp/rows.json"}
    assert plan_isa("avx2", child, flags, "x86_64") is None  # the started process runs it
    for isa, environ, cpu, machine, says in (
            ("avx2", {}, {"avx"}, "x86_64", "this CPU has no AVX2"),
            ("avx2", {}, None, "aarch64", "this machine is aarch64"),
            ("avx", child, flags, "x86_64", "started for a capped run"),  # never loops
            ("avx2", {**child, "ATEN_CPU_CAPABILITY": "avx512"}, flags, "x86_64",
             "started for a capped run")):
        with pytest.raises(RobustaxError, match=says) as e:
            plan_isa(isa, environ, cpu, machine)
        assert "\n" not in str(e.value)


def test_speed_cli_refuses_a_cap_that_would_not_hold(monkeypatch, capsys):
    """In a process marked as the capped run's but without the cap in its environment the
    CLI refuses with one line (exit 2) before timing anything or starting a process."""
    from bench.cli import main
    from bench.pytorch import speed

    monkeypatch.setenv(speed._CHILD, "/nonexistent/rows.json")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(speed, "suite", lambda *a, **k: _must_not("timed"))
    monkeypatch.setattr(speed.subprocess, "run", lambda *a, **k: _must_not("re-executed"))
    monkeypatch.setattr(speed, "_cpu_flags", lambda: None)
    monkeypatch.setattr(speed.platform, "machine", lambda: "x86_64")
    assert main(["speed", "--isa", "avx2", "--models", "cnn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustax: error: --isa avx2: this process was started for a "
                          "capped run") and err.count("\n") == 1


def _must_not(what):
    raise AssertionError(f"must not be {what}")


def test_capped_run_records_the_cap(tmp_path):
    """A tiny `--isa avx2` run (cnn only, no torchattacks, nothing timed asserted): it runs in
    a fresh process, hands its rows back, and speed.md / speed.csv record the CPU, the caps
    and ATen's capability in use (AVX2 when torch is installed: the cap took effect)."""
    import importlib.util
    import platform

    from bench.pytorch.speed import _cpu_flags, main

    flags = _cpu_flags()
    if platform.machine().lower() not in ("x86_64", "amd64") or (flags is not None
                                                                 and "avx2" not in flags):
        pytest.skip("needs an x86 CPU with AVX2")
    rows = main(batch=4, steps=1, repeats=1, torchattacks=False, out=str(tmp_path),
                models=("cnn",), isa="avx2")
    assert rows and {r["model"] for r in rows} == {"cnn"} and rows[0]["measure"] == "forward"
    md = (tmp_path / "speed.md").read_text()
    frame = pd.read_csv(tmp_path / "speed.csv")
    assert "- isa: avx2" in md and "- xla_isa_cap: AVX2" in md
    assert "- torch_isa_cap: ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2" in md
    assert "--xla_cpu_max_isa=AVX2" in md and "--isa avx2" in md
    assert len(frame) == len(rows) and set(frame["xla_isa_cap"]) == {"AVX2"}
    assert set(frame["cpu_avx512"]) <= {"yes", "no", "unknown"}
    if importlib.util.find_spec("torch") is not None:
        assert "- torch_cpu_capability: AVX2" in md
