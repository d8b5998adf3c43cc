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
    f.write_text("def f():\n    from bench.errors import ConfigError\n    import bench.sweep.registry\n")
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
    """Every file robustax writes goes through bench.store.io.atomic_write_bytes."""
    offenders = []
    for p in sorted(ROOT.glob("*/**/*.py")):
        if p.relative_to(ROOT).parts[0] not in OURS or p.relative_to(ROOT) == Path("bench/store/io.py"):
            continue
        text = p.read_text()
        for needle in ("tempfile.mkstemp", "os.replace(", ".write_bytes(", ".write_text(", "save_file("):
            if needle in text:
                offenders.append(f"{p.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders




TORCH_AT_IMPORT = {"bench.pytorch.torch_models"}  # imported lazily: torch is optional
BENCH_PARTS = ("store", "security", "sweep", "reports", "pytorch")


def _declared_imports(part: str) -> set[str]:
    """The ``Imports:`` line of a bench subpackage's docstring."""
    doc = ast.get_docstring(ast.parse((ROOT / "bench" / part / "__init__.py").read_text()))
    lines = [line for line in doc.splitlines() if line.startswith("Imports:")]
    assert len(lines) == 1, f"bench/{part}/__init__.py must state its imports in one line"
    return {n.strip().rstrip(".") for n in lines[0][len("Imports:"):].split(",")}


def our_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import of ours in a file, inside functions included;
    ``from bench import xla`` counts as ``bench.xla``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("bench", "attacks", "models", "defenses"):
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return [(n, m) for n, m in out if m.split(".")[0] in OURS]


def _allowed(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("part", BENCH_PARTS)
def test_bench_parts_import_only_what_their_docstring_declares(part):
    allowed = _declared_imports(part) | {f"bench.{part}"}
    files = sorted((ROOT / "bench" / part).glob("*.py"))
    assert len(files) > 1
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in files
           for line, m in our_imports(p) if not _allowed(m, allowed)]
    assert not bad, f"bench/{part} declares {sorted(allowed)}; " + "; ".join(bad)


def test_nothing_depends_on_the_pytorch_tooling():
    users = [f"{p.relative_to(ROOT)}:{line}" for p in sorted(ROOT.glob("*/**/*.py"))
             if p.relative_to(ROOT).parts[0] in OURS and "pytorch" not in p.parts
             and p.name != "cli.py"
             for line, m in our_imports(p) if m.startswith("bench.pytorch")]
    assert not users, users


def test_no_import_circles_and_no_function_level_imports_of_ours():
    """The module graph of our packages (imports inside functions counted) has no cycle, and
    no function imports a module of ours, except the one module that imports the optional
    torch at import time (``bench.pytorch.torch_models``): the CLI must start without torch."""
    modules = {}
    for p in sorted(ROOT.glob("*/**/*.py")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] not in OURS or rel.parts[0] == "tests":
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        modules[name] = p
    lazy = []
    graph: dict[str, set[str]] = {}
    for name, p in modules.items():
        tree = ast.parse(p.read_text())
        top = {id(n) for n in tree.body}
        deps = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for line, m in imported_modules_of(node):
                target = m if m in modules else m.rsplit(".", 1)[0]
                if target in modules and target != name:
                    deps.add(target)
                    if id(node) not in top and not _in_toplevel_block(tree, node) \
                            and target not in TORCH_AT_IMPORT:
                        lazy.append(f"{name}:{line} imports {m} inside a function")
        graph[name] = deps
    assert not lazy, lazy
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for d in sorted(graph[n]):
            visit(d)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def imported_modules_of(node) -> list[tuple[int, str]]:
    if isinstance(node, ast.Import):
        return [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in OURS]
    if node.level or not node.module or node.module.split(".")[0] not in OURS:
        return []
    if node.module in ("bench", "attacks", "models", "defenses", "bench.sweep", "bench.store",
                       "bench.reports", "bench.security", "bench.pytorch"):
        return [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(node.lineno, node.module)]


def _in_toplevel_block(tree, node) -> bool:
    """An import under a module-level ``if``/``try`` (not in a def or class) counts as top level."""
    for top in tree.body:
        if isinstance(top, (ast.If, ast.Try)) and any(n is node for n in ast.walk(top)):
            return not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                           and any(m is node for m in ast.walk(n)) for n in ast.walk(top))
    return False


def test_the_cli_starts_without_torch():
    """torch is optional: importing the CLI must not import it."""
    import subprocess
    import sys

    code = ("import sys; import bench.cli; "
            "sys.exit(1 if any(m == 'torch' or m.startswith('torch.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
