"""The recent-units memory: the last half of its size always remembered, never more than its size held."""

from __future__ import annotations

import random

from abrouter.router.eventlog.recent import RecentUnits


def test_the_last_half_is_remembered_with_its_latest_stratum_and_the_size_bounds_it() -> None:
    rng = random.Random(3)
    size = 20
    recent = RecentUnits(size)
    order: list[str] = []  # units, most recent last, each once
    latest: dict[str, tuple[int, str]] = {}
    for i in range(2_000):
        unit, epoch, variant = f"u{rng.randint(1, 60)}", 1 + i // 500, rng.choice(["control", "candidate"])
        recent.remember(unit, epoch, variant)
        latest[unit] = (epoch, variant)
        if unit in order:
            order.remove(unit)
        order.append(unit)
        assert len(recent) <= size
        assert all(recent.get(u) == latest[u] for u in order[-size // 2 :])
        # whatever it still holds is the unit's latest stratum, never an older one
        assert all(recent.get(u) in (None, latest[u]) for u in latest)
    assert recent.get("never") is None
