"""The package boundaries DESIGN.md promises, checked on the source itself."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {  # package or module -> the robustax packages or modules it may import
    "attacks": {"attacks"},
    "models": {"models"},
    # The one custom-JVP convolution lives in the fast path; the models' Conv uses it (see
    # models/layers.py). Only this module, and only that module of attacks.
    "models.layers": {"models", "attacks.fastpath"},
    "defenses": {"defenses", "attacks", "models"},
}
OURS = {"attacks", "models", "defenses", "bench"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a file, including those inside functions:
    ``import a.b`` gives ``a.b``; ``from a.b import c`` gives ``a.b.c`` (c may be a module or
    a name in it)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file, including those inside functions."""
    return [(line, name.split(".")[0]) for line, name in imported_modules(path)]


def allowed_for(module: str) -> set[str]:
    """The entry of :data:`ALLOWED` for a dotted module name: its own, else its package's."""
    while module not in ALLOWED:
        module = module.rpartition(".")[0]
    return ALLOWED[module]


def is_allowed(name: str, allowed: set[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("package", sorted({k.split(".")[0] for k in ALLOWED}))
def test_library_packages_do_not_import_upwards(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = []
    for p in files:
        module = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        allowed = allowed_for(module)
        bad += [f"{p.relative_to(ROOT)}:{line} imports {name}"
                for line, name in imported_modules(p)
                if name.split(".")[0] in OURS and not is_allowed(name, allowed)]
    assert not bad, "library code must not import these: " + "; ".join(bad)


def test_the_import_walker_sees_lazy_imports(tmp_path):
    """The check above must catch an import hidden inside a function (mutation guard)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from bench.errors import ConfigError\n    import bench.registry\n")
    assert [n for _, n in imported_packages(f)] == ["bench", "bench"]


def test_the_one_exception_is_one_module_edge(tmp_path):
    """models.layers may import attacks.fastpath and nothing else of attacks; no other
    models module may import attacks at all (mutation guard for the table's lookup)."""
    layers, other = allowed_for("models.layers"), allowed_for("models.cnn")
    assert is_allowed("attacks.fastpath.conv", layers) and is_allowed("attacks.fastpath", layers)
    assert not is_allowed("attacks.pgd", layers) and not is_allowed("attacks.PGD", layers)
    assert not is_allowed("attacks", layers) and not is_allowed("attacks.fastpathx", layers)
    assert not is_allowed("attacks.fastpath", other)
    f = tmp_path / "m.py"
    f.write_text("from attacks import fastpath\nfrom attacks.fastpath import conv\nimport attacks\n")
    assert [is_allowed(n, layers) for _, n in imported_modules(f)] == [True, True, False]


def module_file(name: str) -> Path | None:
    """The library source file of a dotted import (``a.b.c``: a/b/c.py, a/b.py's name c, or
    a/b/__init__.py), None outside attacks/models/defenses."""
    parts = name.split(".")
    if parts[0] not in ALLOWED:
        return None
    for n in range(len(parts), 0, -1):
        for path in (ROOT.joinpath(*parts[:n]).with_suffix(".py"),
                     ROOT.joinpath(*parts[:n], "__init__.py")):
            if path.is_file():
                return path
    return None


def test_library_modules_import_no_circle():
    """No import cycle among the library's modules (a circle is what function-level imports
    used to dodge: defenses.augment <-> defenses.training). Imports inside functions count."""
    files = sorted(p for pkg in ("attacks", "models", "defenses") for p in (ROOT / pkg).rglob("*.py"))
    graph = {p: {f for _, n in imported_modules(p) if (f := module_file(n)) and f != p}
             for p in files}
    done: set[Path] = set()

    def visit(p, stack):
        if p in stack:
            cycle = stack[stack.index(p):] + [p]
            raise AssertionError("import circle: " + " -> ".join(
                str(q.relative_to(ROOT)) for q in cycle))
        if p not in done:
            for q in sorted(graph.get(p, ())):
                visit(q, stack + [p])
            done.add(p)

    for p in files:
        visit(p, [])


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
