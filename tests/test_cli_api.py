"""The command line and the Python API."""

import subprocess
import sys

import numpy as np
import pytest

import attacks
import bench
from bench.cli import main
from bench.errors import ConfigError, DataError


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    from bench.sweep.data import DATASETS
    from bench.sweep.registry import ATTACKS, DEFENSES, MODELS

    for name in [*ATTACKS, *DEFENSES, *MODELS, *DATASETS]:
        assert name in out
    assert "steps=10" in out  # options with defaults


@pytest.mark.parametrize("content,match", [
    ("name = 'x'\n[[models]]\nname = 'mlp'\n[[defenses]]\nname = 'standard'\n[[attacks]]\nname = 'pgd'\neps = [0.1]\nstepz = 3\n",
     "has no option 'stepz'"),
    ("name = 'x'\n[[models]]\nname = 'mlp'\n[[defenses]]\nname = 'standard'\n", "the grid is empty"),
    ("[[models]]\nname = 'nope'\n", "unknown model 'nope'"),
])
def test_run_bad_config_exit_2_one_line(tmp_path, capsys, content, match):
    path = tmp_path / "c.toml"
    path.write_text(content)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustax: error: ") and err.count("\n") == 1
    assert match in err


@pytest.mark.parametrize("argv", [["rn"], ["run"], ["speed", "--batch", "x"], []])
def test_bad_arguments_exit_2_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("robustax: error: ") and err.count("\n") == 1


def test_missing_config_and_bad_report_dir(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_cli_run_and_report(tiny_toml, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(tiny_toml), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "L∞: worst case per example over fgsm, pgd" in printed and "mlp" in printed
    summary = printed.split("run directory:")[0]  # then the path, which may be long
    assert all(len(line) <= 100 for line in summary.splitlines())
    (out / "tables" / "robust_accuracy.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "tables" / "robust_accuracy.md").is_file()


def test_console_script_is_installed():
    """The `robustax` script that `pip install` put next to this interpreter, run as a user would."""
    from pathlib import Path

    script = Path(sys.executable).parent / "robustax"
    assert script.is_file(), f"no console script at {script}; reinstall with pip install -e ."
    result = subprocess.run([str(script), "list"], capture_output=True, text=True)
    assert result.returncode == 0 and "pgd" in result.stdout, result.stderr
    bad = subprocess.run([str(script), "run", "no-such.toml"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr


def test_api_evaluate_arrays_and_names(trained_mlp, digits):
    f, params = trained_mlp
    records = bench.evaluate(f, params, (digits.x_test[:50], digits.y_test[:50]),
                             [attacks.FGSM(), {"name": "pgd", "steps": 5, "eps": [0.0, 0.2]}],
                             eps=[0.1], model="mine")
    assert list(records["attack"]) == ["clean", "fgsm", "pgd", "pgd"]
    assert list(records["eps"]) == [0.0, 0.1, 0.0, 0.2]
    assert (records["model"] == "mine").all() and (records["examples"] == 50).all()
    assert records.iloc[2]["correct"] == records.iloc[0]["correct"]  # ε = 0 is clean
    by_name, masks = bench.evaluate(f, params, "digits", [attacks.FGSM()], eps=[0.1],
                                    eval_examples=50, return_masks=True)
    np.testing.assert_array_equal(by_name["correct"], records["correct"][:2])
    assert all(m.shape == (50,) for m in masks.values())


@pytest.mark.parametrize("data,match", [
    ((np.zeros((4, 8, 8)), np.zeros(4, int)), r"shape \(4, 8, 8\); expected NHWC"),
    ((np.full((4, 8, 8, 1), 255.0), np.zeros(4, int)), r"must be finite and in \[0, 1\]"),
    ((np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, int)), "dtype uint8"),
    ((np.zeros((4, 8, 8, 1)), np.zeros(3, int)), "expected integer labels of shape"),
])
def test_api_rejects_bad_arrays(trained_mlp, data, match):
    f, params = trained_mlp
    with pytest.raises(DataError, match=match):
        bench.evaluate(f, params, data, [attacks.FGSM()], eps=[0.1])


def test_api_rejects_bad_attacks(trained_mlp, digits):
    f, params = trained_mlp
    data = (digits.x_test[:4], digits.y_test[:4])
    with pytest.raises(ConfigError, match="has no eps"):
        bench.evaluate(f, params, data, [attacks.FGSM()])
    with pytest.raises(ConfigError, match="unknown attack 'pdg'"):
        bench.evaluate(f, params, data, [{"name": "pdg", "eps": [0.1]}])
    with pytest.raises(ConfigError, match="is not an attack"):
        bench.evaluate(f, params, data, ["pgd"], eps=[0.1])


def test_speed_benchmark_runs_and_reports_ratios(capsys):
    """A smoke run of `robustax speed` (tiny sizes; no timing is asserted)."""
    assert main(["speed", "--batch", "4", "--steps", "1", "--repeats", "1", "--models", "cnn"]) == 0
    out = capsys.readouterr().out
    assert "× 1 × (fwd+grad)" in out and "sweep engine PGD-1, 4 ε in one call" in out
    assert "PGD-1, called without jax.jit" in out
    assert "PGD-1, 1 ε, over the API kernel" in out and "× 1 × (API PGD-1)" in out
    assert "PGD-1, 1 ε, own clean pass, over the API kernel" in out


def test_xla_configure_appends_once_and_can_be_disabled():
    from bench import xla

    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    xla.configure(env)
    xla.configure(env)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 " + " ".join(xla.CPU_FLAGS)
    off = {"ROBUSTAX_XLA_DEFAULTS": "0"}
    xla.configure(off)
    assert "XLA_FLAGS" not in off


def test_readme_python_example_runs():
    """The README's "Evaluate your own model" example, executed as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"## Evaluate your own model.*?```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    records = namespace["records"]
    assert list(records["attack"]) == ["clean", "fgsm", "fgsm", "pgd", "pgd", "pgd"]
