"""The Aggregator's cells: a unit's only exposure packed straight from it, the others folded, alike."""

from __future__ import annotations

import json

from abrouter.router.eventlog import cells as cells_
from abrouter.router.eventlog.events import Aggregator, Exposure, Outcome

COLUMNS = ["errors", "latency_ms", "slow_requests", "conversion"]


def cells(agg: Aggregator) -> list[list[object]]:
    batch = agg.batch(producer="p", seq=1)
    return cells_.cells_of(json.loads(batch.payload), batch.cells)


def test_a_lone_exposure_and_a_folded_one_give_the_same_cell() -> None:
    lone, folded = (
        Aggregator(COLUMNS, {"conversion"}, slow_ms=100.0),
        Aggregator(COLUMNS, {"conversion"}, slow_ms=100.0),
    )
    e = Exposure("r1", "u1", "control", 2, 5.0, 200, 150.5, True)
    lone.add_exposure(e)
    folded.add_exposure(e)
    folded.add_outcome(Outcome("u1", "control", 2, "conversion", 0.0, 6.0))  # u1 now has cells of its own
    # [h, e, v, latest, n, errors, latency_ms, slow, conversion, its count]
    assert cells(lone) == [["u1", 2, "control", 1, 1, 1, 150.5, 1, 0, 0]]
    assert cells(folded) == [["u1", 2, "control", 1, 1, 1, 150.5, 1, 0, 1]]


def test_exposures_held_across_a_reload_count_as_slow_by_the_threshold_they_came_under() -> None:
    agg = Aggregator(COLUMNS, {"conversion"}, slow_ms=100.0)
    agg.add_exposure(Exposure("r1", "u1", "control", 1, 5.0, 200, 150.0, False))
    agg.add_exposure(Exposure("r2", "u2", "control", 1, 5.0, 200, 150.0, False))
    agg.add_exposure(Exposure("r3", "u2", "control", 1, 5.0, 200, 150.0, False))  # u2 shared
    agg.extend_metrics(COLUMNS, {"conversion"}, slow_ms=200.0)  # a reload raised the threshold
    agg.add_exposure(Exposure("r4", "u1", "control", 1, 6.0, 200, 150.0, False))
    agg.add_exposure(Exposure("r5", "u3", "control", 1, 6.0, 200, 150.0, False))
    assert [(c[0], c[4], c[7]) for c in cells(agg)] == [("u1", 2, 1), ("u2", 2, 2), ("u3", 1, 0)]
