"""Where the running router gets new weights from: one small protocol, one source per kind.

`FileWeightsSource` polls the config file. Polling (not inotify) because Kubernetes
updates a mounted ConfigMap by swapping a symlink, which inotify on the file misses;
comparing the bytes every second is cheap and always right. A Kubernetes `Experiment`
watch will be a second implementation of the same protocol.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from abrouter.contract import experiment as model

log = logging.getLogger("abrouter.weights")

OnChange = Callable[[model.Experiment], None]


@dataclass
class SourceStatus:
    """What /abrouter/experiment shows about the last reload attempt."""

    last_error: str | None = None
    reloads: int = 0


class WeightsSource(Protocol):
    #: The last reload attempt, shown at /abrouter/experiment.
    status: SourceStatus

    async def run(self, on_change: OnChange) -> None:
        """Call `on_change` with each new valid spec until cancelled; never raises otherwise."""


class FileWeightsSource:
    def __init__(self, path: Path, *, interval_s: float = 1.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self.status = SourceStatus()
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    async def run(self, on_change: OnChange) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            digest = self._read_digest()
            if digest is None or digest == self._digest:
                continue
            self._digest = digest
            self._reload(on_change)

    def _reload(self, on_change: OnChange) -> None:
        try:
            on_change(model.load(self.path))
        except Exception as exc:  # ConfigError, ReloadRejected, or a bug: keep serving the old spec
            self.status.last_error = f"{self.path}: {exc}"
            log.error(
                "reload rejected, keeping the current spec: %s",
                self.status.last_error,
                exc_info=not isinstance(exc, ValueError),
            )
            return
        self.status.last_error = None
        self.status.reloads += 1
