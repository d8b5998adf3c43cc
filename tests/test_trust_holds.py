"""Trust that holds (issue 21, cases 3-15): a ledger that cannot be signed over, run
directories that never wedge, terminal output that cannot be injected into, and numbers shown
as computed.

One test (or a pair) per case of the issue, each run against the code before its fix (commit
f7eb74a) and failing there; case 13 (SIGTERM) is the parametrised Ctrl-C test in
tests/test_hardening.py.
"""

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import cli
from bench.errors import RobustaxError
from bench.store.io import json_bytes, mask_bytes
from bench.store.records import RunDir
from bench.sweep import runner
from bench.sweep.config import load_config
from tests.conftest import digits_mlp_toml

TOML = digits_mlp_toml("t21", seed=2, rest="""
    [[attacks]]
    name = "fgsm"
    eps = [0.0, 0.1]
    [[attacks]]
    name = "pgd"
    steps = 3
    eps = [0.1]
""")


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A finished run signed with key k1 (checkpoint signature and ledger head), and a second
    key pair k2: tests work on copies."""
    root = tmp_path_factory.mktemp("t21")
    for k in ("k1", "k2"):
        assert cli.main(["keys", "new", str(root / k)]) == 0
    (root / "t.toml").write_text(TOML)
    out = root / "run"
    assert cli.main(["run", str(root / "t.toml"), "--out", str(out), "--no-progress",
                     "--signing-key", str(root / "k1" / "signing.key")]) == 0
    return root, out


def _copy(signed, tmp_path):
    root, out = signed
    shutil.copytree(out, tmp_path / "run")
    return root, tmp_path / "run"


def _run(root, out, *extra, key="k1"):
    args = ["run", str(root / "t.toml"), "--out", str(out), "--no-progress"]
    if key:
        args += ["--signing-key", str(root / key / "signing.key")]
    return cli.main(args + list(extra))


def _verify(root, out, key="k1"):
    return cli.main(["verify", str(out), "--trust", str(root / key / "signing.pub")])


def _err(capsys, lines=1):
    err = capsys.readouterr().err
    assert err.count("\n") == lines and "Traceback" not in err, err
    return err


def _cell(out, attack="fgsm", eps=0.1):
    for p in sorted((out / "cells").glob("*.json")):
        rec = json.loads(p.read_text())
        if rec["attack"] == attack and rec["eps"] == eps:
            return rec
    raise AssertionError(f"no {attack} cell at {eps}")


def _forge(out, cid):
    """One more robust example in a cell, written consistently: mask, correct, robust_acc,
    mask_sha256 and manifest.json, but not the ledger. Returns the forged record."""
    mpath, cpath = out / "masks" / f"{cid}.npy", out / "cells" / f"{cid}.json"
    mask = np.load(mpath)
    mask[np.flatnonzero(~mask)[0]] = True
    mb = mask_bytes(mask)
    rec = json.loads(cpath.read_text())
    rec.update(correct=int(mask.sum()), robust_acc=float(mask.mean()),
               mask_sha256=hashlib.sha256(mb).hexdigest())
    rb = json_bytes(rec)
    mpath.write_bytes(mb)
    cpath.write_bytes(rb)
    manifest = json.loads((out / "manifest.json").read_text())
    for rel, data in ((f"masks/{cid}.npy", mb), (f"cells/{cid}.json", rb)):
        manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return rec


def _files(out):
    """Every file of a run directory (hidden lock files aside) with its bytes."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


# -- 3. a consistently forged cell is recomputed, never signed ------------------------------------

def test_forged_cell_is_refused_by_report_and_recomputed_by_run(signed, tmp_path, capsys):
    root, out = _copy(signed, tmp_path)
    true = _cell(out)
    forged = _forge(out, true["cell_id"])
    assert forged["correct"] == true["correct"] + 1
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 2
    err = _err(capsys)
    assert f"cells/{true['cell_id']}.json" in err and "ledger entry" in err
    assert _run(root, out) == 0
    err = _err(capsys)
    assert "warning" in err and "ledger entry" in err and "recomputing that cell" in err
    assert _cell(out)["correct"] == true["correct"]
    assert _verify(root, out) == 0


# -- 4. keys and trust are checked before anything is written -------------------------------------

@pytest.mark.parametrize("flags, match", [
    ([("--signing-key", "k2/signing.key")], "not by this run's signing key"),
    ([("--signing-key", "k1/signing.key"), ("--trust", "k2/signing.pub")], "not a trusted key"),
])
def test_wrong_key_writes_nothing(signed, tmp_path, capsys, flags, match):
    root, out = _copy(signed, tmp_path)
    before = _files(out)
    args = [a for flag, rel in flags for a in (flag, str(root / rel))]
    capsys.readouterr()
    assert _run(root, out, *args, key=None) == 2
    assert match in _err(capsys)
    assert _files(out) == before
    assert _verify(root, out) == 0


# -- 5. lines appended by hand are not signed over -------------------------------------------------

def test_hand_appended_ledger_line_is_refused_until_set_aside(signed, tmp_path, capsys):
    """A forged cell with a matching, correctly chained ledger line appended by hand: the
    owner's signed run refuses (one line naming the recovery), `robustax ledger repair` sets
    the line aside, and the next run recomputes the cell: the ledger signs true numbers only."""
    from bench.security.ledger import Ledger, cell_entry, line_hash

    root, out = _copy(signed, tmp_path)
    true = _cell(out)
    forged = _forge(out, true["cell_id"])
    lines = Ledger(out).lines()
    entry = {**cell_entry(out, forged), "seq": len(lines), "prev": line_hash(lines[-1])}
    with open(out / "ledger.jsonl", "ab") as f:
        f.write(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    before = _files(out)
    capsys.readouterr()
    assert _run(root, out) == 2
    err = _err(capsys)
    assert "after its head" in err and f"robustax ledger repair {out}" in err
    assert _files(out) == before
    assert cli.main(["ledger", "repair", str(out)]) == 0
    assert (out / "ledger.jsonl.corrupt").is_file()
    capsys.readouterr()
    assert _run(root, out) == 0
    assert "recomputing that cell" in _err(capsys)
    assert _cell(out)["correct"] == true["correct"]
    assert _verify(root, out) == 0


# -- 6. a directory that is not a run is not written into ------------------------------------------

def test_out_that_is_not_a_run_is_refused(signed, tmp_path, capsys):
    root, _ = signed
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my notes\n")
    (out / "records.csv").write_text("a,b\n1,2\n")
    capsys.readouterr()
    assert _run(root, out, key=None) == 2
    err = _err(capsys)
    assert "not a robustax run" in err and "report.md" in err
    assert sorted(p.name for p in out.iterdir()) == ["records.csv", "report.md"]
    assert (out / "report.md").read_text() == "my notes\n"


# -- 7. a damaged info file is recomputed -----------------------------------------------------------

def test_damaged_info_is_recomputed(signed, tmp_path, capsys):
    root, out = _copy(signed, tmp_path)
    cid = _cell(out, "pgd")["cell_id"]
    info = out / "info" / f"{cid}.npz"
    good = info.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01
    info.write_bytes(bytes(data))
    cfg = load_config(root / "t.toml")
    capsys.readouterr()
    runner.run_sweep(runner_cfg(cfg, root), out, progress=False)
    err = _err(capsys)
    assert str(info) in err and "recomputing that cell" in err
    assert info.read_bytes() == good
    assert "first_fooled_step" in RunDir(out).read_info(cid)


def runner_cfg(cfg, root):
    from bench.security.commands import apply_run_flags

    class Args:
        signing_key, encryption_key, trust = str(root / "k1" / "signing.key"), None, None

    return apply_run_flags(cfg, Args)


# -- 8. a truncated ledger: which entries are intact, and the recovery -------------------------------

def test_truncated_ledger_names_intact_entries_and_the_repair(signed, tmp_path, capsys):
    root, out = _copy(signed, tmp_path)
    ledger = out / "ledger.jsonl"
    n = ledger.read_bytes().count(b"\n")
    ledger.write_bytes(ledger.read_bytes()[:-20])
    capsys.readouterr()
    assert _run(root, out) == 2
    err = _err(capsys)
    assert f"entries 0–{n - 2} are intact" in err and f"robustax ledger repair {out}" in err
    assert _verify(root, out) == 2
    err = _err(capsys)
    assert f"entries 0–{n - 2} are intact" in err and f"robustax ledger repair {out}" in err
    # the head is signed: repairing it needs the key that signed it
    assert cli.main(["ledger", "repair", str(out)]) == 2
    assert "--signing-key" in _err(capsys)
    assert cli.main(["ledger", "repair", str(out), "--signing-key",
                     str(root / "k1" / "signing.key")]) == 0
    capsys.readouterr()
    assert _run(root, out) == 0
    assert _verify(root, out) == 0


# -- 9. a checkpoint damaged after its cells finished is reported --------------------------------------

def test_checkpoint_damaged_after_its_cells_is_reported(signed, tmp_path, capsys):
    root, out = _copy(signed, tmp_path)
    (ckpt,) = (out / "checkpoints").glob("*.safetensors")
    data = bytearray(ckpt.read_bytes())
    data[-6] ^= 0x40
    ckpt.write_bytes(bytes(data))
    capsys.readouterr()
    assert _run(root, out) == 0
    err = _err(capsys)
    assert f"checkpoint {ckpt}" in err and "damaged" in err
    assert cli.main(["report", str(out)]) == 0
    err = _err(capsys)
    assert f"checkpoint {ckpt}" in err and "damaged" in err


# -- 10, 11. hostile labels: escaped on the terminal, no third-party warnings -------------------------

HOSTILE = {"model": "a\u0000b\u001b[31mRED\u001b[0m\r\nX", "defense": "d\u0007ef\tx",
           "attack": "f\u001b]0;title\u0007gsm", "long": "a very long attack label " * 4}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """`robustax run` of a config whose labels hold control characters (and a long one), with
    its stdout and stderr as the terminal would get them (file descriptors)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("hostile")
    toml = TOML.replace("depth = 1", f"depth = 1\nlabel = {json.dumps(HOSTILE['model'])}")
    toml = toml.replace("epochs = 1", f"epochs = 1\nlabel = {json.dumps(HOSTILE['defense'])}")
    toml = toml.replace("eps = [0.0, 0.1]", f"eps = [0.0, 0.1]\nlabel = "
                                            f"{json.dumps(HOSTILE['attack'])}")
    toml = toml.replace("steps = 3", f"steps = 3\nlabel = {json.dumps(HOSTILE['long'])}")
    (root / "h.toml").write_text(toml)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           **{k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}}
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(root / "h.toml"), "--out",
                           str(root / "run"), "--no-progress"], check=False, capture_output=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stdout.decode(), proc.stderr.decode()


def test_control_characters_in_labels_are_escaped(hostile):
    out, _ = hostile
    for raw in ("\x00", "\x1b", "\r", "\x07", "\t"):
        assert raw not in out, repr(raw)
    assert "\\x1b[31mRED" in out
    assert all(line.isprintable() for line in out.splitlines())


def test_no_third_party_warnings_on_stderr(hostile, tmp_path, capfd, caplog):
    """matplotlib (the hostile run's stderr is empty), absl and Orbax."""
    import logging

    _, err = hostile
    assert err == "", err
    # absl: a TFDS variant folder without dataset_info.json, before our one-line data error
    # (pytest takes log records off stderr: they are counted as records)
    from bench.errors import DataError
    from bench.sweep.data import load_dataset

    (tmp_path / "tfds" / "mnist" / "3.0.1").mkdir(parents=True)
    capfd.readouterr()
    with caplog.at_level(logging.INFO), pytest.raises(DataError, match="not prepared"):
        load_dataset("tfds:mnist", data_dir=str(tmp_path / "tfds"))
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # Orbax: restoring a checkpoint saved from jax arrays warns about sharding
    import orbax.checkpoint as ocp

    from bench.sweep.weights import read_flat

    ck = ocp.StandardCheckpointer()
    ck.save((tmp_path / "orbax").resolve(), {"params": {"w": jnp.ones((3, 2))}})
    ck.wait_until_finished()
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flat = read_flat(tmp_path / "orbax")
    assert list(flat) == ["params/w"]
    assert [str(w.message) for w in caught] == [] and capfd.readouterr().err == ""


# -- 12. bench.evaluate: integer logits and NaN images ---------------------------------------------------

def test_evaluate_refuses_integer_logits_and_names_nan(linear_model, images):
    import bench
    from bench.errors import DataError

    f, params = linear_model
    x, y = images
    y = np.asarray(jnp.argmax(f(params, jnp.asarray(x)), -1))
    with pytest.raises(DataError, match=r"logits of dtype int32.*float") as e:
        bench.evaluate(lambda p, z: jnp.round(f(p, z)).astype(jnp.int32), params, (x, y),
                       [{"name": "fgsm", "eps": [0.1]}])
    assert "\n" not in str(e.value)
    bad = x.copy()
    bad[0, 0, 0, 0] = bad[3, 1, 1, 0] = bad[5, 2, 2, 0] = np.nan
    with pytest.raises(DataError, match=r"images contain 3 NaN values"):
        bench.evaluate(f, params, (bad, y), [{"name": "fgsm", "eps": [0.1]}])


# -- 14. targeted PGD records the first misclassification, the mask's event ---------------------------

def test_targeted_pgd_records_the_first_misclassification():
    import attacks

    k1, k2 = jax.random.split(jax.random.key(21))
    params = (jax.random.normal(k1, (36, 16)) * 0.8, jax.random.normal(k2, (16, 5)) * 1.5)

    def f(p, z):
        return jnp.tanh(z.reshape(z.shape[0], -1) @ p[0]) @ p[1]

    x = jax.random.uniform(jax.random.key(1), (64, 6, 6, 1))
    y = jnp.argmax(f(params, x), -1)
    target = (y + 1) % 5
    attack = attacks.PGD(steps=6, targeted=True, unroll=1)
    x_adv, info = attack.run(f, params, x, y, 0.08, jax.random.key(2), target)
    first = np.asarray(info["first_fooled_step"])
    pred = np.asarray(jnp.argmax(f(params, x_adv), -1))
    fooled, at_target = pred != np.asarray(y), pred == np.asarray(target)
    assert (fooled & ~at_target).any()  # misclassified without reaching the target: the case
    assert ((first >= 0) & (first <= 6))[fooled].all()  # every fooled example has its step
    assert (first[at_target] >= 0).all()


# -- 15. report --baseline --by label --tolerance; stream outside TFDS --------------------------------------

def test_report_baseline_by_label_and_tolerance(tmp_path, capsys):
    from tests.test_trust import healthy_cells, write_run

    base = write_run(tmp_path / "base", healthy_cells(), defense_options={"epochs": 20})
    new = write_run(tmp_path / "new", healthy_cells(drop=12), defense_options={"epochs": 40})
    capsys.readouterr()
    assert cli.main(["report", str(new.root), "--baseline", str(base.root)]) == 2
    assert "--by label" in capsys.readouterr().err
    assert cli.main(["report", str(new.root), "--baseline", str(base.root), "--by", "label",
                     "--tolerance", "40"]) == 0
    verdict = json.loads((new.root / "compare" / "compare.json").read_text())
    assert verdict["by"] == "label" and verdict["tolerance"] == 40 and verdict["fails"] == 0
    assert "5 cells matched by label" in (new.root / "report.md").read_text()


def test_stream_outside_tfds_is_noted(capsys):
    from bench.sweep.data import load_dataset

    capsys.readouterr()
    load_dataset("digits", stream=True)
    err = _err(capsys)
    assert err.startswith("robustax: warning: ") and "stream" in err and "ignored" in err
    with pytest.raises(RobustaxError):
        load_dataset("nothing", stream=True)
