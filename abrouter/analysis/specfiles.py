"""The experiment files of ``analyze --config``, each parsed again only when it changed.

A look re-reads its spec (an edit, or the file sink's last decision, must be seen), but
parsing the YAML is about 2 ms of CPU, a third of a look; one process looking at many
files every minute would spend most of that on files that did not change. A file counts
as changed when its modification time (in nanoseconds), size or inode differ: the file
sink and editors replace the file (a new inode), and an edit in place changes the time.
"""

from __future__ import annotations

import os
from pathlib import Path

from abrouter.contract import experiment as spec

Signature = tuple[int, int, int]


class SpecFiles:
    """`load` with a memory of the last parse of each file (`Experiment` is frozen: sharing it is safe)."""

    def __init__(self) -> None:
        self._parsed: dict[Path, tuple[Signature, spec.Experiment]] = {}
        #: Files parsed (not taken from memory), for tests and benchmarks.
        self.parses = 0

    def load(self, path: Path) -> spec.Experiment:
        """`abrouter.contract.experiment.load`, without parsing a file again that did not change."""
        try:
            st = os.stat(path)
        except OSError:
            return spec.load(path)  # raises the ConfigError that names the file
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        known = self._parsed.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        experiment = spec.load(path)
        self.parses += 1
        self._parsed[path] = (signature, experiment)
        return experiment
