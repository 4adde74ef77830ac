"""`FileSink`: decisions written to the experiment YAML that the router watches."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from abrouter.analysis.decision import Decision
from abrouter.analysis.errors import SourceError
from abrouter.analysis.sinks.policy import next_spec
from abrouter.contract import experiment as spec


@dataclass(frozen=True)
class FileSink:
    """Rewrites the experiment file with new weights and the next epoch, atomically.

    The router reloads the file when it changes. The new file is the canonical spec
    (`abrouter.contract.experiment.to_dict`): valid for `load`, but without the original's
    comments and layout.
    """

    path: Path

    async def apply(self, decision: Decision, *, epoch: int) -> bool:
        # A few kilobytes of local file I/O: not worth a thread.
        updated = next_spec(spec.load(self.path), decision, epoch=epoch, where=str(self.path))
        if updated is None:
            return False
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        header = (
            f"# Written by `abrouter analyze --apply` at {stamp}:\n"
            f"# {decision.action} -> epoch {updated.epoch}. Comments of the original are not kept.\n"
        )
        _write_atomically(self.path, header + yaml.safe_dump(spec.to_dict(updated), sort_keys=False))
        return True


def _write_atomically(path: Path, text: str) -> None:
    """Temp file in the same directory, fsync, then rename: readers see old or new, never half."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SourceError(f"cannot write {path}: {exc.strerror or exc}") from exc
