"""The house rules on imports, checked on the source (every import statement, also those inside
functions): strategies are pure (no database, API or engine), the engine knows nothing of the web
layers or of authentication above it, authentication nothing of the API or the dashboard, the
API's routes and the dashboard's pages and endpoints never touch the ORM (they call functions that
own their transaction), the proxy models know nothing of the service or the workers, and the
workers speak to the service over HTTP only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RULES = [
    ("service.strategies", ("service.db", "service.api", "service.engine", "service.dashboard", "sqlalchemy", "httpx")),
    # the engine is the bottom of the service: no web framework, no caller of its own above it
    ("service.engine", ("service.api", "service.auth", "service.dashboard", "service.app", "service.cli", "fastapi")),
    # authentication sits on the engine, under the API and the dashboard that check callers with it
    ("service.auth", ("service.api", "service.dashboard", "service.app", "service.cli", "fastapi")),
    ("service.api", ("service.dashboard", "service.app", "service.cli")),
    # routes and pages only call functions that own their transaction and return schemas
    ("service.api.routes", ("sqlalchemy", "service.db")),
    ("service.dashboard._api", ("sqlalchemy", "service.db")),
    ("service.dashboard._pages", ("sqlalchemy", "service.db")),
    ("proxy_models", ("service", "workers")),
    ("workers", ("service",)),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def files_of(package: str) -> list[Path]:
    """The files of a package, or the one file of a module."""
    path = ROOT / package.replace(".", "/")
    return [path.with_suffix(".py")] if path.with_suffix(".py").is_file() else sorted(path.rglob("*.py"))


def test_the_rules_see_imports():
    """The checker itself: relative imports resolve, and a known import is seen."""
    seen = imports_of(ROOT / "service" / "engine" / "_studies.py")
    assert "service.db" in seen and "service.strategies" in seen


@pytest.mark.parametrize(("package", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_import_rules(package: str, forbidden: tuple[str, ...]):
    files = files_of(package)
    assert files, f"no files under {package}"
    broken = [f"{module_name(f)} imports {name}" for f in files for name in sorted(imports_of(f))
              if any(name == x or name.startswith(x + ".") for x in forbidden)]
    assert broken == []


def _module_graph(package: str) -> dict[str, set[str]]:
    """``{module: modules of package it imports}``; an import of a name resolves to the longest
    module prefix (``from .x import f`` is an edge to ``x``)."""
    files = files_of(package)
    modules = {module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        edges = set()
        for name in imports_of(f):
            parts = name.split(".")
            target = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules), None)
            if target and target != module_name(f):
                edges.add(target)
        graph[module_name(f)] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_service():
    """No module of ``service`` imports itself through others (also through imports inside
    functions, which only hide a cycle), and no subpackage imports one that imports it back: the
    app (``service.app``) sits above the API and the dashboard, the engine's modules form layers."""
    graph = _module_graph("service")
    assert _cycle(graph) is None
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        top = ".".join(module.split(".")[:2])
        packages.setdefault(top, set()).update(".".join(t.split(".")[:2]) for t in targets)
    assert _cycle({p: t - {p} for p, t in packages.items()}) is None


def test_the_server_starts_without_torch_or_scipy_stats():
    """Importing the app (what ``mixopt server`` does at start) imports neither torch nor
    scipy.stats: together they were 2.6 s of a 3.9 s import. The serving app imports them in the
    background once it is up (tests/test_server_start.py); ADMIRE and the Spearman figures also
    import them where they use them."""
    import subprocess
    import sys

    code = "import sys, service.app; print(sorted(m for m in ('torch', 'scipy.stats') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
