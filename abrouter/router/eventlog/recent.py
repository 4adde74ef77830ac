"""The units this process exposed lately, and where: so `EventLog.lookup_units` rarely needs Redis. Pure.

Two generations, each the exposures in arrival order (two lists: units, strata) and a dict
from unit to its latest stratum built from them only when a lookup needs it, up to where
it has got. An exposure is two list appends, in memory that is written in order; the
dict is filled at lookups (outcomes, far fewer than exposures at a busy router), each
exposure once. When the young generation holds half the capacity, it becomes the old one
(the old one before it is dropped whole) and a new young one starts. A lookup asks the
young one, then the old one. So the units of the last ``size // 2`` exposures are always
remembered, and at most ``size`` exposures held.

Issue 17: an `OrderedDict` kept exactly the last ``size`` units, at a move and an eviction
per exposure (`_remember`, 3.4% of a saturated router's busy time); one store per
exposure into a dict of 50,000 (a random place in a table bigger than the caches) still
cost 2.5%. The (epoch, variant) pairs are shared, one per stratum, not a tuple per exposure.
"""

from __future__ import annotations


class _Generation:
    """Exposures in arrival order, and the dict of unit -> latest stratum over the first `indexed` of them."""

    def __init__(self) -> None:
        self.units: list[str] = []
        self.strata: list[tuple[int, str]] = []
        self.index: dict[str, tuple[int, str]] = {}
        self.indexed = 0

    def get(self, unit: str) -> tuple[int, str] | None:
        units, strata, index = self.units, self.strata, self.index
        for i in range(self.indexed, len(units)):  # later exposures overwrite earlier ones
            index[units[i]] = strata[i]
        self.indexed = len(units)
        return index.get(unit)


class RecentUnits:
    """See the module docstring. `size`: the most exposures held (at least 2)."""

    def __init__(self, size: int) -> None:
        self._half = max(1, size // 2)
        self._young = _Generation()
        self._old = _Generation()
        self._strata: dict[str, tuple[int, str]] = {}  # variant -> its latest (epoch, variant)

    def remember(self, unit: str, epoch: int, variant: str) -> None:
        stratum = self._strata.get(variant)
        if stratum is None or stratum[0] != epoch:
            stratum = self._strata[variant] = (epoch, variant)
        young = self._young
        young.units.append(unit)
        young.strata.append(stratum)
        if len(young.units) >= self._half:
            self._old, self._young = young, _Generation()

    def get(self, unit: str) -> tuple[int, str] | None:
        """The (epoch, variant) of the unit's latest exposure remembered, or None."""
        stratum = self._young.get(unit)
        return stratum if stratum is not None else self._old.get(unit)

    def __len__(self) -> int:
        """Exposures held."""
        return len(self._young.units) + len(self._old.units)
