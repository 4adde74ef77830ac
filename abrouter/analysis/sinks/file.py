"""Where decisions go: a small protocol with one implementation per target.

`WeightsSink.apply` writes the decision's weights and returns whether anything changed.
The weights version (`epoch`) the decision was computed under comes along: a sink must
refuse to overwrite newer weights (someone, or another analyzer, changed them since) and
raise `ConflictError`; the next look then decides on fresh data. Implementations:

- `FileSink`: the experiment YAML the router watches;
- `DryRunSink`: records decisions, changes nothing (`analyze` without ``--apply``);
- a Kubernetes sink (the custom resource's weights) implements the same method.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from abrouter.analysis.data import percent
from abrouter.analysis.decision import Decision, same_weights
from abrouter.analysis.errors import ConflictError, SourceError
from abrouter.contract import experiment as spec


class WeightsSink(Protocol):
    async def apply(self, decision: Decision, *, epoch: int) -> bool:
        """Serve `decision.weights` from now on; True when they differ from the current ones."""
        ...


@dataclass
class DryRunSink:
    """Keeps the decisions it was given (for tests and dry runs) and writes nothing."""

    decisions: list[Decision] = field(default_factory=list)

    async def apply(self, decision: Decision, *, epoch: int) -> bool:
        self.decisions.append(decision)
        return False


@dataclass(frozen=True)
class FileSink:
    """Rewrites the experiment file with new weights and the next epoch, atomically.

    The router reloads the file when it changes. The new file is the canonical spec
    (`router.experiment.to_dict`): valid for `router.experiment.load`, but without the
    original's comments and layout. Unchanged weights write nothing, so no empty epoch is
    opened.
    """

    path: Path

    async def apply(self, decision: Decision, *, epoch: int) -> bool:
        # A few kilobytes of local file I/O: not worth a thread.
        current = spec.load(self.path)
        if current.epoch != epoch:
            raise ConflictError(
                f"{self.path}: the weights changed since the analysis (epoch "
                f"{current.epoch}, analysed {epoch}); not writing"
            )
        if same_weights(decision.weights, percent({v.name: v.weight for v in current.variants})):
            return False
        updated = current.with_weights(decision.weights)
        header = (
            f"# Written by `abrouter analyze --apply` at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}:\n"
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
