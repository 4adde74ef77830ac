"""What the analyzer saw at its last look, kept outside Redis, so a Redis that lost data is noticed.

The routers notice a Redis that lost their batches (the experiment marker, the seqs it
acknowledged), but not when every router restarted too: a new process has nothing to
compare with. The analyzer keeps a witness where it writes its decisions (beside the
spec file for ``analyze --apply``, `FileWitness`; in the Experiment's ``status.witness``
for ``analyze --experiment NS/NAME --apply``, `StatusWitness`): the units and exposures
of its last look. Redis'
aggregates only grow, so a look that finds fewer than the witness saw means Redis lost
data; the look is then marked incomplete since the last look that saw it whole, and
stays so (the witness remembers).
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from abrouter.analysis.data import ExperimentData
from abrouter.analysis.errors import SourceError


@dataclass(frozen=True)
class Seen:
    """Totals over every arm and epoch at one look (unix time `at`)."""

    units: int
    exposures: int
    at: float
    #: Set once a look found Redis holding less than an earlier one: since when (the
    #: earlier look's time) the data is known to be incomplete.
    incomplete_since: float | None = None


class Witness(Protocol):
    def load(self) -> Seen | None: ...

    def save(self, seen: Seen) -> None: ...


def observe(data: ExperimentData, *, at: float) -> Seen:
    """Pure: the totals of `data`."""
    strata = [s for arm in data.arms for s in arm.strata]
    return Seen(units=sum(s.units for s in strata), exposures=sum(s.exposures for s in strata), at=at)


def compare(previous: Seen | None, now: Seen) -> Seen:
    """Pure: `now`, marked incomplete when it holds less than `previous` (or `previous` was)."""
    if previous is None:
        return now
    since = previous.incomplete_since
    if now.units < previous.units or now.exposures < previous.exposures:
        since = previous.at if since is None else min(since, previous.at)
    return dataclasses.replace(now, incomplete_since=since)


@dataclass(frozen=True)
class FileWitness:
    """A small JSON file: ``<spec file>.seen.json`` beside the spec that `FileSink` writes."""

    path: Path

    @classmethod
    def beside(cls, spec_path: Path) -> FileWitness:
        return cls(spec_path.with_name(spec_path.name + ".seen.json"))

    def load(self) -> Seen | None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return Seen(**doc)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:  # unreadable: say so, do not guess
            raise SourceError(f"cannot read the analyzer's witness {self.path}: {exc}") from exc

    def save(self, seen: Seen) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(dataclasses.asdict(seen), handle)
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise SourceError(f"cannot write the analyzer's witness {self.path}: {exc}") from exc


@dataclass
class StatusWitness:
    """The witness in an Experiment's ``status.witness``, for the Kubernetes sink.

    Read with the resource at the start of a look (`of`); what the look saw is kept in
    `saved` and written with the look's status (`to_status`), through the status
    subresource like the rest of it. A look that writes no status (it failed before, or
    ran without ``--apply``) leaves the last witness as it was.
    """

    previous: Seen | None
    saved: Seen | None = None

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> StatusWitness:
        return cls(from_status(status.get("witness")))

    def load(self) -> Seen | None:
        return self.previous

    def save(self, seen: Seen) -> None:
        self.saved = seen


_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def to_status(seen: Seen) -> dict[str, Any]:
    """Pure: ``status.witness`` (times in RFC 3339, whole seconds, as the rest of the status)."""
    since = seen.incomplete_since
    return {
        "units": seen.units,
        "exposures": seen.exposures,
        "time": time.strftime(_TIME_FORMAT, time.gmtime(seen.at)),
        "incompleteSince": None if since is None else time.strftime(_TIME_FORMAT, time.gmtime(since)),
    }


def from_status(doc: object) -> Seen | None:
    """Pure: the `Seen` of a ``status.witness`` (None when there is none); `SourceError` when it is malformed."""
    if doc is None:
        return None
    try:
        if not isinstance(doc, Mapping):
            raise TypeError(f"not an object: {doc!r}")
        since = doc.get("incompleteSince")
        return Seen(
            units=_count(doc["units"]),
            exposures=_count(doc["exposures"]),
            at=_unix(doc["time"]),
            incomplete_since=None if since is None else _unix(since),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"cannot read the analyzer's witness in status.witness: {exc}") from exc


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _unix(value: object) -> float:
    if not isinstance(value, str):
        raise TypeError(f"not an RFC 3339 time: {value!r}")
    return float(calendar.timegm(time.strptime(value, _TIME_FORMAT)))
