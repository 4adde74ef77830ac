"""The recent-units memory: the units of the last half of its size in exposures always remembered, never more
than its size in exposures held."""

from __future__ import annotations

import random

from abrouter.router.eventlog.recent import RecentUnits


def test_the_last_half_is_remembered_with_its_latest_stratum_and_the_size_bounds_it() -> None:
    rng = random.Random(3)
    size = 20
    recent = RecentUnits(size)
    exposed: list[str] = []  # units, in order of their exposures
    latest: dict[str, tuple[int, str]] = {}
    for i in range(2_000):
        unit, epoch, variant = f"u{rng.randint(1, 60)}", 1 + i // 500, rng.choice(["control", "candidate"])
        recent.remember(unit, epoch, variant)
        latest[unit] = (epoch, variant)
        exposed.append(unit)
        assert len(recent) <= size
        if rng.random() < 0.3:  # looked up now and then: the index is built as far as the exposures go
            assert all(recent.get(u) == latest[u] for u in exposed[-size // 2 :])
        # whatever it still holds is the unit's latest stratum, never an older one
        assert all(recent.get(u) in (None, latest[u]) for u in latest)
    assert recent.get("never") is None
