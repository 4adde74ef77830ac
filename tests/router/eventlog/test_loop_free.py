"""A full batch does not hold the event loop: it is encoded in slices, and a spill line is cheap to read.

Wall-clock stalls are measured in bench/loop_stall.py (bench/README.md); these tests
check the structure that keeps them short.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
from pathlib import Path

from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.router.eventlog import cells as cells_
from abrouter.router.eventlog import events, log, slices, spill
from abrouter.router.eventlog.events import Aggregator, Exposure, Outcome

N = 5 * slices.SLICE + 17


def full_aggregator() -> Aggregator:
    exp = model.parse(
        {
            "name": "loopfree",
            "unit": {"header": "X-User-Id"},
            "metrics": [{"name": "conversion", "kind": "binary"}, {"name": "revenue", "kind": "continuous"}],
            "variants": [{"name": v, "upstream": f"http://{v}:8080", "weight": 50} for v in ("control", "candidate")],
        }
    )
    agg = Aggregator(keys.metric_order(exp), events.binary_metrics(exp))
    for i in range(N):  # every unit new: one cell per exposure, the worst case
        agg.add_exposure(Exposure(f"r{i}", f"u{i}", "control", 1, 1.5, 200, 2.0, False))
        agg.add_outcome(Outcome(f"u{i}", "control", 1, "revenue", 1.0, 1.5, event_id=f"e{i}"))
    agg.add_outcome(Outcome("only-outcome", "candidate", 1, "conversion", 1.0, 1.5))  # a cell with no exposure
    return agg


def test_encoding_yields_after_every_slice_and_gives_the_same_batch() -> None:
    agg = full_aggregator()
    steps = agg.encode(producer="p", seq=1, slice_size=100)
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            batch = done.value
            break
        yields += 1
    cells, keyed, raw = N + 1, N, 2 * N + 1  # the rows of each array
    # Steps: the shared units' exposures folded (none: every unit here has one cell), their
    # cells put in runs (the outcome-only one), every event (its cell and its audit row), a
    # yield after each 100 of each; then the keyed rows, a yield after each slice of them;
    # and one after the last join.
    assert yields == 0 // 100 + 1 // 100 + raw // 100 + math.ceil(keyed / 100) + 1
    assert batch == agg.batch(producer="p", seq=1)
    payload = json.loads(batch.payload)
    rows = cells_.cells_of(payload, batch.cells)
    assert len(rows) == cells and rows[-1][0] == "only-outcome"  # exposed cells first
    assert len(payload["keyed"]) == keyed and len(json.loads(batch.events)) == raw


async def test_the_event_loop_runs_between_slices() -> None:
    agg = full_aggregator()
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = turns
    batch = await log.encode_batch(agg, producer="p", seq=1)
    task.cancel()
    n_slices = sum(math.ceil(n / slices.SLICE) for n in (2 * N + 1, N))  # the events, the keyed rows
    assert turns - before >= n_slices - 1  # a turn of the ticker after every slice but the last
    assert batch == agg.batch(producer="p", seq=1)


def test_a_spill_line_holds_the_payload_verbatim_and_old_lines_still_read(tmp_path: Path) -> None:
    batch = full_aggregator().batch(producer="p", seq=7)
    line = spill.encode(batch)
    header, payload, raw, packed = line.rstrip(b"\n").split(b"\t")
    assert payload == batch.payload.encode() and raw == batch.events.encode()  # nothing re-escaped
    assert base64.b64decode(packed) == batch.cells and batch.cells
    assert json.loads(header) == {"producer": "p", "seq": 7, "n": batch.n_events}
    assert spill.decode(line) == batch
    older = dataclasses.replace(batch, payload=cells_.as_version(batch.payload, batch.cells, 5)[0], cells=b"")
    old = json.dumps(
        {"producer": "p", "seq": 7, "n": batch.n_events, "payload": older.payload, "events": batch.events},
        separators=(",", ":"),
    )
    path = tmp_path / "x.spill"
    # a file written before the change (a batch from before packed cells), then lines after it
    path.write_bytes(old.encode() + b"\n" + spill.encode(older) + line)
    assert [b for b, _ in spill.read_batches(path)] == [older, older, batch]


def test_a_busy_routers_batch_is_encoded_a_few_hundred_rows_at_a_time() -> None:
    # A batch cut at `log.BATCH_EVENTS` (a router at a few thousand calls/s) must not hold the
    # loop for milliseconds in one step: at ~1.2 µs a row, a step of 1,000 rows held it
    # ~1.2-2.5 ms (bench/README.md, issue 17). Counted in rows, not timed.
    n = log.BATCH_EVENTS
    agg = Aggregator(["errors", "latency_ms", "slow_requests"], set())
    for i in range(n):
        agg.add_exposure(Exposure(f"r{i}", f"u{i}", "control", 1, 1.5, 200, 2.0, False))
    steps = agg.encode(producer="p", seq=1)  # the default slice, as `log.encode_batch` runs it
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration:
            break
        yields += 1
    assert n / yields <= 256  # exposures (a cell and an audit row each) per step
