"""Leader election through a ``coordination.k8s.io/v1`` Lease: the decision, apart from any I/O (pure).

Several replicas of a controller (the analyzer's Deployment) share one Lease; the one
named in ``spec.holderIdentity`` acts, the others stand by. The rules are client-go's
(``k8s.io/client-go/tools/leaderelection``), with its defaults (`ElectionSettings`):

- the holder renews the Lease (``spec.renewTime``) every `retry_period_s`;
- a candidate takes the Lease over only once it has seen the same Lease record unchanged
  for `lease_duration_s` on its *own* clock (`Observed`): the holder's ``renewTime`` is
  never compared with the candidate's clock, so clock skew between nodes cannot make two
  leaders;
- the holder stops acting as soon as it has not renewed for `renew_deadline_s` (shorter
  than the lease duration), or as soon as it reads a Lease held by someone else: it has
  stopped before anyone may take over;
- every write carries the ``resourceVersion`` it read, so of two candidates writing at once
  one gets 409 Conflict and stays a follower;
- a holder that stops cleanly releases the Lease (no holder), so a standby takes over at
  its next try instead of after the lease duration.

`decide` says what to do with the Lease just read; `abrouter.kube.leader` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["create", "acquire", "renew", "standby"]


@dataclass(frozen=True)
class ElectionSettings:
    """The timings of one election, client-go's defaults; every field in seconds."""

    #: The Lease's name, in the namespace the controller works in.
    lease: str = "abrouter-analyzer"
    #: How long a candidate waits, having seen the Lease unchanged, before taking it over.
    lease_duration_s: float = 15.0
    #: How long the holder may go without a successful renewal before it stops acting.
    renew_deadline_s: float = 10.0
    #: How often the holder renews and a standby looks at the Lease again.
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s):
            raise ValueError(
                "leader election needs 0 < retry_period_s < renew_deadline_s < lease_duration_s, got "
                f"{self.retry_period_s}, {self.renew_deadline_s}, {self.lease_duration_s}"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """What the election reads of a Lease (None of it: the Lease does not exist)."""

    holder: str | None
    #: The Lease's ``resourceVersion``: a write guarded by it fails if the Lease changed since.
    resource_version: str
    #: ``spec.leaseTransitions``: how many times the holder changed.
    transitions: int = 0
    #: ``spec.renewTime`` as the holder wrote it; only a changed value counts (`Observed`).
    renew_time: str | None = None
    #: ``spec.acquireTime``: when the holder took the Lease (kept by its renewals).
    acquire_time: str | None = None


@dataclass(frozen=True)
class Observed:
    """A Lease record and when this candidate first saw it, on its own monotonic clock."""

    record: LeaseRecord
    since: float

    def seen(self, record: LeaseRecord, *, now: float) -> Observed:
        """The observation after reading `record` at `now`: the clock restarts only when the record changed."""
        return self if _same(record, self.record) else Observed(record, now)


def _same(a: LeaseRecord, b: LeaseRecord) -> bool:
    return (a.holder, a.renew_time, a.transitions) == (b.holder, b.renew_time, b.transitions)


def decide(observed: Observed | None, *, me: str, now: float, settings: ElectionSettings) -> Action:
    """What to do with the Lease just read: create it, take it over, renew it, or stand by.

    `observed` is None when the Lease does not exist; `now` is the monotonic clock of
    `observed.since`.
    """
    if observed is None:
        return "create"
    holder = observed.record.holder
    if holder == me:
        return "renew"
    if not holder or now - observed.since >= settings.lease_duration_s:
        return "acquire"
    return "standby"


def leading(last_renewal: float | None, *, now: float, settings: ElectionSettings) -> bool:
    """Whether the holder may still act at `now`, having last renewed (or acquired) at `last_renewal`."""
    return last_renewal is not None and now - last_renewal < settings.renew_deadline_s
