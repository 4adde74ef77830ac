"""The data path's two builds: compiled with mypyc (setup.py) and pure Python (`ABROUTER_PURE=1`).

The suite runs against whichever build the install made (compiled where a C compiler was
there); these tests run the HTTP/2, own-server gRPC, exchange and HTTP/1.1 path (server, stream
driver, httptools upstream client) tests again in a subprocess on the pure modules, so both builds
are checked on every run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from abrouter.router.h2 import native

ROOT = Path(__file__).resolve().parents[3]
GRPC = ROOT / "tests" / "router" / "grpc"
EXCHANGE_TESTS = ("stream", "assignment", "headers_ids_routing", "exposures")


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "ABROUTER_PURE"}, **extra}


def _loaded(env: dict[str, str], first: str = "abrouter.router.h2.native") -> list[str]:
    """The files a fresh interpreter loads the compiled modules from, and its `native.mode()`; `first`: the
    module it imports first."""
    code = (
        f"import {first}\n"
        "import importlib; from abrouter.router.h2 import native\n"
        "print(native.mode())\n"
        "for name in native.COMPILED: print(importlib.import_module(name).__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.splitlines()


def test_an_install_that_could_compile_the_group_did() -> None:
    """The build falls back to pure Python with only a warning (no compiler, or mypyc's type check failed,
    e.g. on a dependency the build environment lacks): here, where it could compile, that is a failure."""
    cc = str(sysconfig.get_config_var("CC") or "").split()
    if not cc or shutil.which(cc[0]) is None or importlib.util.find_spec("mypyc") is None:
        pytest.skip("no C compiler or no mypyc: the pure build is the expected one")
    assert native.MANIFEST.exists(), (
        "`pip install -e .` did not compile the data path (or ran with ABROUTER_PURE=1): "
        "`pip install -v -e .` shows BuildExt's warning saying why"
    )


def test_abrouter_pure_loads_every_module_of_the_group_from_its_source() -> None:
    mode, *files = _loaded(_env(ABROUTER_PURE="1"))
    assert mode == "pure Python: ABROUTER_PURE is set"
    assert files == [str(native.source(name)) for name in native.COMPILED]


@pytest.mark.parametrize("first", ["abrouter.router.exchange", "abrouter.router.assignment"])
def test_the_build_is_chosen_before_a_module_of_the_router_that_is_not_of_the_grpc_path_is_imported(
    first: str,
) -> None:
    _, *files = _loaded(_env(ABROUTER_PURE="1"), first)
    assert files == [str(native.source(name)) for name in native.COMPILED]
    mode, *files = _loaded(_env(), first)
    assert [not f.endswith(".py") for f in files] == [native.compiled()] * len(native.COMPILED), (mode, files)


def test_without_abrouter_pure_the_build_that_is_there_loads_all_or_nothing() -> None:
    mode, *files = _loaded(_env())
    assert mode == native.mode()
    compiled = [not f.endswith(".py") for f in files]
    assert compiled == [native.compiled()] * len(native.COMPILED), files


def test_the_version_says_which_build_loads() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "abrouter", "--version"],
        env=_env(ABROUTER_PURE="1"),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.startswith("abrouter ")
    assert out.stdout.endswith("; data path: pure Python: ABROUTER_PURE is set\n")


def test_the_http2_own_server_grpc_exchange_and_http1_tests_pass_on_the_pure_modules() -> None:
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    hpack = Path(__file__).with_name("test_hpack.py")  # not this file's directory: it would run itself
    h2 = [str(GRPC / f"test_h2_{name}.py") for name in ("conformance", "wire", "hold")] + [str(hpack)]
    # The exchange and its helpers, shared with the HTTP path (a couple of seconds).
    h2 += [str(ROOT / "tests" / "router" / f"test_{name}.py") for name in EXCHANGE_TESTS]
    # The HTTP/1.1 path: its wire (server, driver and httptools client together) and that client.
    http = [str(ROOT / "tests" / "router" / "http" / "test_wire.py")]
    upstream = ROOT / "tests" / "router" / "upstream"
    http += [str(upstream / f"test_{name}.py") for name in ("httpclient", "httpclient_start")]
    http += ["-k", "not aiohttp"]
    for args in (h2, [str(GRPC / "test_proxy.py"), "-k", "own"], http):
        run = subprocess.run(
            [*pytest, *args], env=_env(ABROUTER_PURE="1"), cwd=ROOT, capture_output=True, text=True, timeout=900
        )
        assert run.returncode == 0, run.stdout[-3000:]
        assert " passed" in run.stdout.splitlines()[-1] and "failed" not in run.stdout.splitlines()[-1]
