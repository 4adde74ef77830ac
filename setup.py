"""The build: everything is in pyproject.toml but the compiled data path (the per-request code of both listeners).

The modules of `abrouter.router.h2.native.COMPILED` (HTTP/2 and the gRPC relay, the
router's per-call code on its gRPC listener) are compiled with mypyc, which ships with
mypy (a build requirement), when a C compiler is there; an editable install
(``pip install -e .``) builds them in place, beside the sources. Without a compiler, or
with ``ABROUTER_PURE=1``, nothing is compiled and the package runs as pure Python; a build
that fails is a warning, not a failed install. `native` decides at import time which of
the two a process loads (see its docstring); `_native.json`, written here, says which
sources were compiled.
"""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
NATIVE: dict[str, Any] = runpy.run_path(str(HERE / "abrouter" / "router" / "h2" / "native.py"))


def _pure_requested() -> bool:
    return os.environ.get("ABROUTER_PURE", "") not in ("", "0")


_built: list[list[Extension]] = []
#: The commands that build extensions (pip runs others, egg_info and dist_info, in processes of their own).
_BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop"}


class BuildExt(build_ext):
    """mypyc's extensions, generated only when they are to be built (mypy's type check takes seconds)."""

    def finalize_options(self) -> None:
        if not _built:  # setuptools finalizes the command more than once in one build
            _built.append(self._extensions())
        self.distribution.ext_modules = _built[0]
        super().finalize_options()

    def _extensions(self) -> list[Extension]:
        if not set(self.distribution.commands) & _BUILDS:  # pip's metadata steps: nothing is built
            return []
        if _pure_requested():
            self.announce("ABROUTER_PURE is set: the data path is not compiled", level=3)
            return []
        try:
            from mypyc.build import mypycify

            modules = [str(Path(*name.split(".")).with_suffix(".py")) for name in NATIVE["COMPILED"]]
            # The build environment has mypy but not the runtime dependencies (redis, yaml, ...): modules beyond
            # the compiled ones are followed for their types, their errors not reported (`.venv/bin/mypy` does).
            flags = ["--no-warn-unused-configs", "--ignore-missing-imports", "--follow-imports=silent"]
            return list(mypycify([*flags, *modules], group_name=NATIVE["GROUP"]))
        except (ImportError, SystemExit) as exc:  # mypyc missing, or its type check failed
            self.warn(f"the data path is not compiled, it runs as pure Python: {exc!r}")
            return []

    def run(self) -> None:
        manifest = Path(self.get_ext_fullpath(NATIVE["GROUP"] + "__mypyc")).with_name("_native.json")
        manifest.unlink(missing_ok=True)
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as exc:  # no C compiler: the pure modules serve
            self.warn(f"the data path is not compiled, it runs as pure Python: {exc}")
            return
        sources = {name: NATIVE["digest"](NATIVE["source"](name)) for name in NATIVE["COMPILED"]}
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(sources, indent=1) + "\n")


# A placeholder: the wheel is then platform-specific; BuildExt replaces it with mypyc's.
setup(ext_modules=[Extension(NATIVE["GROUP"] + "__mypyc", sources=[])], cmdclass={"build_ext": BuildExt})
