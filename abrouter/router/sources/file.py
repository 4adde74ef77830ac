"""`FileSource`: the experiment spec from a YAML file, polled.

Polling (not inotify) because Kubernetes updates a mounted ConfigMap by swapping a
symlink, which inotify on the file misses; comparing the bytes every second is cheap and
always right.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from abrouter.contract import experiment as model


class FileSource:
    """Yields the spec whenever the file's bytes change (see `sources.base.SpecSource`)."""

    def __init__(self, path: Path, *, interval_s: float = 1.0) -> None:
        self.path = path
        self.name = str(path)
        self.interval_s = interval_s
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    async def updates(self) -> AsyncIterator[model.Experiment | model.ConfigError]:
        while True:
            await asyncio.sleep(self.interval_s)
            digest = self._read_digest()
            if digest is None or digest == self._digest:
                continue
            self._digest = digest
            try:
                yield model.load(self.path)
            except model.ConfigError as exc:
                yield exc
