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


def import_statements(path: Path) -> list[tuple[int, str, bool]]:
    """(line, dotted name, inside a function) of every import in a file: ``import a.b`` gives
    ``a.b``; ``from a.b import c`` gives ``a.b.c`` (c may be a module or a name in it)."""
    out = []

    def visit(node, in_function):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.extend((node.lineno, f"{node.module}.{alias.name}", in_function)
                       for alias in node.names)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return out


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a file, including those inside functions."""
    return [(line, name) for line, name, _ in import_statements(path)]


def module_graph(packages) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """The import graph of our modules in ``packages`` (module -> modules of ours it imports,
    imports inside functions counted) and the function-level imports of our modules."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}
    graph, lazy = {}, []
    for name, p in modules.items():
        graph[name] = set()
        for line, imported, in_function in import_statements(p):
            target = imported
            while target and target not in modules:  # a.b.c: module a.b's name c, or a's
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
                if in_function:
                    lazy.append((target, f"{name}:{line} imports {imported} inside a function"))
    return graph, lazy


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated last), or None."""
    done: set[str] = set()

    def visit(n, stack):
        if n in stack:
            return stack[stack.index(n):] + [n]
        if n in done:
            return None
        for d in sorted(graph.get(n, ())):
            if (cycle := visit(d, stack + [n])) is not None:
                return cycle
        done.add(n)
        return None

    return next((c for n in sorted(graph) if (c := visit(n, [])) is not None), None)


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


def test_library_modules_import_no_circle():
    """No import cycle among the library's modules (a circle is what function-level imports
    used to dodge: defenses.augment <-> defenses.training). Imports inside functions count."""
    cycle = find_cycle(module_graph(("attacks", "models", "defenses"))[0])
    assert cycle is None, "import circle: " + " -> ".join(cycle)


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
    """(line, dotted name) of every import of ours in a file, inside functions included."""
    return [(line, n) for line, n in imported_modules(path) if n.split(".")[0] in OURS]


@pytest.mark.parametrize("part", BENCH_PARTS)
def test_bench_parts_import_only_what_their_docstring_declares(part):
    allowed = _declared_imports(part) | {f"bench.{part}"}
    files = sorted((ROOT / "bench" / part).glob("*.py"))
    assert len(files) > 1
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in files
           for line, m in our_imports(p) if not is_allowed(m, allowed)]
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
    graph, lazy = module_graph(sorted(OURS))
    lazy = [where for target, where in lazy if target not in TORCH_AT_IMPORT]
    assert not lazy, lazy
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cli_starts_without_torch():
    """torch is optional: importing the CLI must not import it."""
    import subprocess
    import sys

    code = ("import sys; import bench.cli; "
            "sys.exit(1 if any(m == 'torch' or m.startswith('torch.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
