"""Cell identity by meaning: ids come from what determines the numbers, never from source bytes.

A cell's id and a checkpoint's key hash the resolved config (without settings that cannot
change results), the data's content digest, the weights' digest and the declared ``numerics``
version of each attack, model and defense. These tests prove the rule both ways: a refactor
(moving, renaming, reformatting code) keeps every id, a numerics bump changes exactly the
cells that use the bumped class, and every committed result is matched by id by a fresh plan.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import attacks
import models
from bench.sweep.config import load_config
from bench.sweep.data import load_dataset
from bench.sweep.plan import make_plan

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in (ROOT / "bench" / "configs").glob("*.toml")
                 if (ROOT / "results" / p.stem / "records.csv").is_file())


def _plan(cfg):
    data = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir,
                        train_examples=cfg.data.train_examples, base_dir=cfg.base_dir)
    return make_plan(cfg, data.fingerprint())


def _ids(cfg) -> dict[str, tuple]:
    """cell id -> (model, defense, attack, norm, eps) of every cell of the plan."""
    plan = _plan(cfg)
    out = {}
    for u in plan.units:
        for c in u.cells:
            what = ("clean", "none") if c.attack is None else (c.attack.label, c.attack.norm)
            out[c.cell_id] = (u.model.label, u.defense_label, *what, c.eps)
    return out


@pytest.fixture(scope="module")
def default_cfg():
    return load_config(ROOT / "bench" / "configs" / "default.toml")


def test_every_shipped_config_matches_its_committed_results_by_id():
    """`robustax compare results/X <rerun>` pairs cells by id: a fresh plan of each shipped
    config must name exactly the committed cells (a numerics bump must rebuild the results
    it moves, in the same commit)."""
    assert "default" in SHIPPED and len(SHIPPED) >= 6, SHIPPED
    bad = []
    for name in SHIPPED:
        ids = _ids(load_config(ROOT / "bench" / "configs" / f"{name}.toml"))
        planned = set(ids)
        frame = pd.read_csv(ROOT / "results" / name / "records.csv")
        committed = set(frame["cell_id"])
        if planned != committed:
            bad.append(f"{name}: {len(planned & committed)} of {len(committed)} committed "
                       f"cells matched, {len(planned - committed)} planned cells are new")
    assert not bad, "; ".join(bad)


def test_stream_and_data_dir_do_not_change_ids(default_cfg):
    before = _ids(default_cfg)
    data = dataclasses.replace(default_cfg.data, stream=True, data_dir="/somewhere/else")
    assert _ids(dataclasses.replace(default_cfg, data=data)) == before


def test_eval_examples_changes_every_cell(default_cfg):
    data = dataclasses.replace(default_cfg.data, eval_examples=100)
    assert not set(_ids(dataclasses.replace(default_cfg, data=data))) & set(_ids(default_cfg))


@pytest.mark.parametrize("bump,uses", [
    (attacks.PGD, lambda k: k[2] == "pgd"),
    (attacks.FGSM, lambda k: k[2] == "fgsm"),
    (models.MLP, lambda k: k[0] == "mlp"),
])
def test_a_numerics_bump_changes_exactly_the_cells_that_use_it(default_cfg, monkeypatch,
                                                                bump, uses):
    before = _ids(default_cfg)
    monkeypatch.setattr(bump, "numerics", getattr(bump, "numerics", 0) + 1, raising=False)
    after = _ids(default_cfg)
    changed = {k for i, k in before.items() if i not in after}
    assert changed == {k for k in before.values() if uses(k)}
    assert changed, "the bumped class is used by the default sweep"


def test_a_training_defense_bump_rekeys_its_checkpoints(default_cfg, monkeypatch):
    import defenses

    before = {(t.model.label, t.defense.label): t.digest for t in _plan(default_cfg).trainings}
    monkeypatch.setattr(defenses.PGDAT, "numerics", getattr(defenses.PGDAT, "numerics", 0) + 1,
                        raising=False)
    after = {(t.model.label, t.defense.label): t.digest for t in _plan(default_cfg).trainings}
    assert {k for k in before if before[k] != after[k]} == {
        (m, "pgd-at") for m, _ in before}


_IDS_SCRIPT = textwrap.dedent("""
    import json, sys
    from bench.sweep.config import load_config
    from bench.sweep.data import load_dataset
    from bench.sweep.plan import make_plan
    cfg = load_config(sys.argv[1])
    data = load_dataset(cfg.data.name, train_examples=cfg.data.train_examples)
    plan = make_plan(cfg, data.fingerprint())
""")
_WHERE = """
import bench.sweep.plan as where
print(where.__file__)
print(json.dumps(sorted([c.cell_id for c in plan.cells] + [t.digest for t in plan.trainings])))
"""


def test_moving_renaming_and_reformatting_code_keeps_every_id(tmp_path):
    """A copy of the code with a module renamed (models/cnn.py -> models/small_cnn.py), a
    class moved to another file and files reformatted plans the default sweep with the same
    cell ids and checkpoint keys as this checkout."""
    for pkg in ("attacks", "models", "defenses", "bench"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "models" / "cnn.py").rename(tmp_path / "models" / "small_cnn.py")
    for p in (tmp_path / "models").glob("*.py"):
        p.write_text(p.read_text().replace("models.cnn", "models.small_cnn")
                     .replace("from models import cnn", "from models import small_cnn as cnn"))
    for rel in ("attacks/pgd.py", "defenses/training.py", "defenses/pgd_at.py",
                "bench/sweep/plan.py"):
        p = tmp_path / rel
        p.write_text("# reformatted\n\n" + p.read_text().replace("\n\n\n", "\n\n\n\n") + "\n# end\n")
    cfg = ROOT / "bench" / "configs" / "default.toml"

    def ids(cwd: Path) -> list[str]:
        # ``-c``: sys.path starts at ``cwd`` (a script file would put its own folder first)
        env = {**os.environ, "PYTHONPATH": str(cwd), "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", _IDS_SCRIPT + _WHERE, str(cfg)], cwd=cwd,
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        *_, where, found = out.stdout.strip().splitlines()
        assert Path(where) == cwd / "bench" / "sweep" / "plan.py", where  # that copy ran
        return json.loads(found)

    moved = ids(tmp_path)
    assert not (tmp_path / "models" / "cnn.py").exists()
    assert moved == ids(ROOT)
