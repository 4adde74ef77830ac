"""Which build of the gRPC hot path is loaded: compiled with mypyc, or the pure-Python modules.

`setup.py` compiles the modules in `COMPILED` with mypyc when it can (``pip install -e .``
puts the extension modules beside the sources) and writes `MANIFEST`: the SHA-256 of each
source it compiled. Python would load an extension module before its ``.py``; `install`
(run by ``abrouter.router``'s ``__init__``, before any of them is imported) decides once per
process, for all of them together (compiled modules call each other's classes directly,
so a mix cannot work), and otherwise makes the import system load the ``.py`` files:

- ``ABROUTER_PURE=1`` in the environment: pure;
- an extension module or the manifest missing (no compiler at install time, a plain
  source checkout): pure;
- a source changed since the build (an edited checkout, another branch): pure, with a
  warning naming it, rather than a stale build running other code than the source says.

`mode` says which was chosen (``abrouter --version`` and the gRPC listener's log line).
This module imports nothing of the router: it runs before them.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

log = logging.getLogger("abrouter.h2")

#: The modules setup.py compiles, the data path's per-request code: HTTP/2 and the gRPC relay, the HTTP/1.1 server,
#: the stream driver and the upstream client, the event log's recording and encoding, and the exchange it
#: shares with the HTTP path (assignment, request ids, exposures, headers, metrics, the routing table and its
#: per-variant `routing.Arm`), the connections' clocks and the experiments' match (`matching`), called per call
#: by both listeners.
COMPILED = (
    "abrouter.router.h2.frames",
    "abrouter.router.h2.hpack",
    "abrouter.router.h2.connection",
    "abrouter.router.grpc.wire",
    "abrouter.router.grpc.oip",
    "abrouter.router.grpc.relay",
    "abrouter.router.grpc.h2upstream",
    "abrouter.router.grpc.h2server",
    "abrouter.router.exchange",
    "abrouter.router.requestid",
    "abrouter.router.assignment",
    "abrouter.router.exposures",
    "abrouter.router.headers",
    "abrouter.router.metrics",
    "abrouter.router.connections",
    "abrouter.router.matching",
    "abrouter.router.routing",
    "abrouter.router.eventlog.events",
    "abrouter.router.eventlog.cells",
    "abrouter.router.eventlog.slices",
    "abrouter.router.eventlog.audit",
    "abrouter.router.eventlog.recent",
    "abrouter.router.http.server",
    "abrouter.router.stream",
    "abrouter.router.upstream.httpconn",
    "abrouter.router.upstream.httpclient",
)
#: The shared library of the compiled group (mypyc's ``group_name`` + ``__mypyc``).
GROUP = "abrouter.router.h2._native"
MANIFEST = Path(__file__).with_name("_native.json")
ROOT = Path(__file__).resolve().parents[3]

_mode: str | None = None


def source(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _extension(module: str) -> Path | None:
    path = source(module)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        found = path.with_suffix(suffix)
        if found.exists():
            return found
    return None


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _why_pure() -> str | None:
    """None when the compiled build can be loaded, else why not."""
    if os.environ.get("ABROUTER_PURE", "") not in ("", "0"):
        return "ABROUTER_PURE is set"
    if _extension(GROUP + "__mypyc") is None or not MANIFEST.exists():
        return "not compiled (no C compiler or mypy at install time, or ABROUTER_PURE=1 then)"
    built: dict[str, str] = json.loads(MANIFEST.read_text())
    for module in COMPILED:
        if _extension(module) is None or module not in built:
            return f"{module} not compiled"
        if built[module] != digest(source(module)):
            return f"{source(module).name} changed since it was compiled; `pip install -e .` rebuilds it"
    return None


class _PureFinder:
    """Loads the ``.py`` of a compiled module (a meta path finder ahead of the path's)."""

    @staticmethod
    def find_spec(
        fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


def install() -> str:
    """Decide (once) which build this process loads; returns `mode`."""
    global _mode
    if _mode is None:
        why = _why_pure()
        if why is None:
            _mode = "compiled (mypyc)"
        else:
            _mode = f"pure Python: {why}"
            if "changed since" in why:
                log.warning("the data path runs as pure Python: %s", why)
            sys.meta_path.insert(0, _PureFinder())
    return _mode


def mode() -> str:
    """``compiled (mypyc)`` or ``pure Python: <why>``."""
    return install()


def compiled() -> bool:
    return mode().startswith("compiled")
