"""The house rules on imports, checked on the source (every import statement, also those inside
functions): strategies are pure (no database, API or engine), the proxy models know nothing of
the service or the workers, and the workers speak to the service over HTTP only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RULES = [
    ("service.strategies", ("service.db", "service.api", "service.engine", "service.dashboard", "sqlalchemy", "httpx")),
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
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


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
