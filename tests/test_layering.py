"""The direction of dependencies from shared/DESIGN.md, checked on the import statements."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IO_LIBS = {"aiohttp", "redis", "kubernetes", "yarl"}
#: Modules that hold pure logic: no network or storage libraries.
PURE = ["router/experiment.py", "router/assignment.py", "router/headers.py", "router/routing.py",
        "router/outcomes.py", "router/requestid.py", "router/metrics.py", "router/events.py",
        "router/keys.py", "analysis/decision.py", "analysis/data.py", "analysis/explain.py",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "analysis" / "stats").glob("*.py"))]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module):
    assert not imported_roots(ROOT / module) & IO_LIBS


@pytest.mark.parametrize("module", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "router").rglob("*.py")))
def test_router_never_imports_the_analyzer(module):
    assert "analysis" not in imported_roots(ROOT / module)
