"""Where the running router gets its spec from: sources produce specs, `follow` applies them.

A source (`file.FileSource`, `kube.KubeSource` for an `Experiment` resource) only yields each new
spec it reads, or the `ConfigError` that made one unusable. The bookkeeping that every
source would otherwise repeat lives once, in `follow`: apply the spec, keep the old one
when it is rejected (an invalid spec, or a `ReloadRejected` change), log it, and keep
`SourceStatus` (shown at /abrouter/experiment) up to date. A source that loses the right
to read its spec (`Access`) makes the router not ready until it regains it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from abrouter.contract.experiment import ConfigError, Experiment
from abrouter.errors import UserError

log = logging.getLogger("abrouter.weights")

OnChange = Callable[[Experiment], None]


@dataclass
class SourceStatus:
    """What /abrouter/experiment shows about the last reload attempt."""

    last_error: str | None = None
    reloads: int = 0
    #: Why the source cannot read its spec at all (its credentials or Role), or None.
    #: Unlike an unreachable API, this does not heal by waiting: the router is not ready.
    access_error: str | None = None


@dataclass(frozen=True)
class Access:
    """Not a spec: a source lost (`error`) or regained (None) the right to read its spec."""

    error: str | None


class SpecSource(Protocol):
    #: Names the source in messages: a file path, or NAMESPACE/NAME of a resource.
    name: str

    def updates(self) -> AsyncIterator[Experiment | ConfigError | Access]:
        """Each changed spec (or why it cannot be used, or a change of `Access`) until cancelled; never raises."""
        ...


async def follow(source: SpecSource, on_change: OnChange, status: SourceStatus) -> None:
    """Apply every update of `source` through `on_change`, until cancelled."""
    async for update in source.updates():
        offer(update, on_change, status, where=source.name)


def offer(update: Experiment | ConfigError | Access, on_change: OnChange, status: SourceStatus, *, where: str) -> bool:
    """Apply one update; on any failure keep serving the current spec. True if applied."""
    if isinstance(update, Access):
        access(update, status, where=where)
        return False
    try:
        if isinstance(update, ConfigError):
            raise update
        on_change(update)
    except Exception as exc:  # ConfigError, ReloadRejected, or a bug: keep serving the old spec
        status.last_error = f"{where}: {exc}"
        log.error(
            "reload rejected, keeping the current spec: %s", status.last_error, exc_info=not isinstance(exc, UserError)
        )
        return False
    status.last_error = None
    status.reloads += 1
    return True


def access(update: Access, status: SourceStatus, *, where: str) -> None:
    """Record a lost or regained right to read the spec; it shows as the reload error meanwhile."""
    if update.error is not None:
        status.access_error = status.last_error = f"{where}: {update.error}"
        log.error("cannot follow the spec, serving the current one and reporting not ready: %s", status.last_error)
        return
    if status.access_error is not None and status.last_error == status.access_error:
        status.last_error = None
    status.access_error = None
    log.info("%s: readable again; following it", where)


@dataclass(frozen=True)
class Spec:
    """The current spec of experiment `name` (its resource's name), or why it cannot be used."""

    name: str
    spec: Experiment | ConfigError


@dataclass(frozen=True)
class Removed:
    """Experiment `name` was deleted (or no longer carries the selected labels)."""

    name: str


#: What `abrouter.router.sources.catalog.CatalogSource` yields.
CatalogUpdate = Spec | Removed | Access
