"""The package boundaries DESIGN.md promises, checked on the source itself."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {  # package -> robustax packages it may import
    "attacks": {"attacks"},
    "models": {"models"},
    "defenses": {"defenses", "attacks", "models"},
}
OURS = {"attacks", "models", "defenses", "bench"}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_library_packages_do_not_import_upwards(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}"
           for p in files for line, name in imported_packages(p)
           if name in OURS and name not in ALLOWED[package]]
    assert not bad, "library code must not import these: " + "; ".join(bad)


def test_the_import_walker_sees_lazy_imports(tmp_path):
    """The check above must catch an import hidden inside a function (mutation guard)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from bench.errors import ConfigError\n    import bench.registry\n")
    assert [n for _, n in imported_packages(f)] == ["bench", "bench"]


def test_one_atomic_writer():
    """Every file robustax writes goes through records.atomic_write_bytes."""
    offenders = []
    for p in sorted(ROOT.glob("*/*.py")):
        if p.parts[-2] not in OURS or p.name == "records.py":
            continue
        text = p.read_text()
        for needle in ("tempfile.mkstemp", "os.replace(", ".write_bytes(", ".write_text(", "save_file("):
            if needle in text:
                offenders.append(f"{p.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


def test_training_version_covers_what_training_imports():
    """Checkpoints are keyed by the source their weights depend on, found by following
    imports: PGD-AT depends on PGD and the losses, not on Square; standard training not on PGD."""
    import defenses
    import models
    from bench.plan import train_version, training_sources

    rel = lambda classes: {str(p.relative_to(ROOT)) for p in training_sources(*classes)}
    pgd_at = rel((defenses.PGDAT, models.CNN))
    assert {"attacks/pgd.py", "attacks/losses.py", "defenses/training.py", "models/cnn.py",
            "models/layers.py", "models/base.py"} <= pgd_at
    assert "attacks/square.py" not in pgd_at and "bench/plan.py" not in pgd_at
    assert "attacks/pgd.py" not in rel((defenses.Standard, models.MLP))
    assert train_version(defenses.PGDAT, models.CNN) != train_version(defenses.Standard, models.CNN)
