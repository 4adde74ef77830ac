"""Every import the docs show in a Python code block works: the docs name real modules and names."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def imports() -> list[tuple[str, str, str]]:
    """(doc, module, name) for each `from M import N` line in a ```python block of README/docs."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in BLOCK.findall(doc.read_text()):
            for line in block.splitlines():
                if line.startswith(("from ", "import ")):
                    node = ast.parse(line).body[0]
                    if isinstance(node, ast.ImportFrom) and node.module:
                        found += [(doc.name, node.module, a.name) for a in node.names]
                    elif isinstance(node, ast.Import):
                        found += [(doc.name, a.name, "") for a in node.names]
    return found


def test_the_docs_show_imports() -> None:
    assert len(imports()) >= 2  # the statistics doc's API blocks


@pytest.mark.parametrize(("doc", "module", "name"), imports())
def test_a_documented_import_works(doc: str, module: str, name: str) -> None:
    imported = importlib.import_module(module)
    assert not name or hasattr(imported, name), f"{doc}: {module} has no {name}"
