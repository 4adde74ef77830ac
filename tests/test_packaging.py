"""One import name: only `abrouter` is installed, whatever the folders are called inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("abrouter-*.whl")
    return found


def test_the_wheel_holds_one_top_level_package_and_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"abrouter", f"{wheel.name.split('-')[0]}-0.1.0.dist-info"}
    lua = Path(ROOT / "abrouter/router/eventlog/lua")
    parts = {f"abrouter/router/eventlog/lua/{p.relative_to(lua)}" for p in lua.rglob("*.lua")}
    assert "abrouter/router/eventlog/lua/commands/flush.lua" in parts and parts <= set(names)
    assert "abrouter/router/examples/experiment.yaml" in names


@pytest.mark.parametrize("name", ["router", "analysis"])
def test_router_and_analysis_are_not_importable_from_outside_the_checkout(tmp_path: Path, name: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_the_installed_command_works_from_outside_the_checkout(tmp_path: Path) -> None:
    command = shutil.which("abrouter", path=str(Path(sys.executable).parent))
    assert command is not None, "the console script is installed beside the interpreter"
    result = subprocess.run([command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "serve" in result.stdout and "analyze" in result.stdout
