"""The units this process exposed lately, and where: so `EventLog.lookup_units` rarely needs Redis. Pure.

Two generations of plain dicts instead of a least-recently-used order: a unit is written
into the young one; when that holds half the capacity, it becomes the old one (the old
one before it is dropped whole) and a new young one starts. A lookup asks the young one,
then the old one. So the last ``size // 2`` units exposed are always remembered, and at
most ``size`` are held. An `OrderedDict` kept exactly the last ``size``, at a move and an
eviction per exposure: ~0.6 µs a call saturated (`_remember`, 3.4% of the router's busy
time, issue 17); this is one dict store. The (epoch, variant) pairs are shared, one per
stratum, rather than a new tuple per exposure.

Tried and dropped: each generation as lists appended to (units, strata), the dict built
only when a lookup asks. Cheaper per call (0.6% of the busy time against 2.3%: a store into
a 50,000-entry table misses the caches), but the first lookup after 100,000 exposures with
none built the index in one piece: ~23 ms of the event loop, every call in flight held.
"""

from __future__ import annotations


class RecentUnits:
    """See the module docstring. `size`: the most units held (at least 2)."""

    def __init__(self, size: int) -> None:
        self._half = max(1, size // 2)
        self._young: dict[str, tuple[int, str]] = {}
        self._old: dict[str, tuple[int, str]] = {}
        self._strata: dict[str, tuple[int, str]] = {}  # variant -> its latest (epoch, variant)

    def remember(self, unit: str, epoch: int, variant: str) -> None:
        stratum = self._strata.get(variant)
        if stratum is None or stratum[0] != epoch:
            stratum = self._strata[variant] = (epoch, variant)
        young = self._young
        young[unit] = stratum
        if len(young) >= self._half:
            self._old, self._young = young, {}

    def get(self, unit: str) -> tuple[int, str] | None:
        """The (epoch, variant) of the unit's latest exposure remembered, or None."""
        stratum = self._young.get(unit)
        return stratum if stratum is not None else self._old.get(unit)

    def __len__(self) -> int:
        return len(self._young) + len(self._old)
