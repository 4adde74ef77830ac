"""flush.lua is assembled from `lua/commands` and `lua/includes`; its batch format is versioned."""

from __future__ import annotations

import dataclasses
import json
import re
import time

import pytest
import redis.asyncio

from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.router.errors import BatchRejected
from abrouter.router.eventlog import cells, events, script
from abrouter.router.eventlog.events import BATCH_VERSION, Event, Exposure, Outcome
from abrouter.router.eventlog.log import APPLIED, FlushScript
from tests.router.eventlog.test_eventlog import _batch, make_experiment


def test_every_include_is_used_and_none_is_left_unresolved() -> None:
    command = (script.LUA_DIR / "commands" / "flush.lua").read_text()
    included = set(script._INCLUDE.findall(command))
    assert included == {p.stem for p in (script.LUA_DIR / "includes").glob("*.lua")}
    assert "--- @include" not in script.FLUSH_SCRIPT
    for part in included:
        assert (script.LUA_DIR / "includes" / f"{part}.lua").read_text() in script.FLUSH_SCRIPT


async def test_a_batch_of_an_unknown_format_version_is_refused_whole(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    exp = make_experiment(experiment_name)
    flush = FlushScript(redis_client, keys.Keys(experiment_name))
    await flush.load()
    batch = _batch(exp, [Exposure("r1", "u1", "control", 1, time.time(), 200, 1.0, False)], 1)
    assert json.loads(batch.payload)["v"] == BATCH_VERSION
    newer = dataclasses.replace(batch, payload=batch.payload.replace(f'"v":{BATCH_VERSION}', '"v":99', 1))
    with pytest.raises(BatchRejected, match="batch format version 99"):
        await flush.apply(newer, allow_gap=False)
    assert await redis_client.exists(*keys.Keys(experiment_name).all()) == 0
    old = json.loads(cells.as_version(batch.payload, batch.cells, 1)[0])
    del old["v"]  # a batch from before versions (a spill file of an older router): version 1
    old_batch = dataclasses.replace(batch, payload=json.dumps(old), cells=b"")
    assert (await flush.apply(old_batch, allow_gap=False))[0] == APPLIED


@pytest.mark.parametrize("cut", [1, 9, -1])
async def test_packed_cells_that_are_not_whole_cells_refuse_the_batch_whole(
    redis_client: redis.asyncio.Redis, experiment_name: str, cut: int
) -> None:
    exp = make_experiment(experiment_name)
    flush = FlushScript(redis_client, keys.Keys(experiment_name))
    await flush.load()
    recorded = [Exposure(f"r{i}", f"u{i}", "control", 1, time.time(), 200, 1.0, False) for i in range(3)]
    batch = _batch(exp, recorded, 1)
    damaged = batch.cells[:cut] if cut > 0 else batch.cells + b"\x00"  # cut inside a cell; or bytes left over
    with pytest.raises(BatchRejected, match="not a whole number of cells"):
        await flush.apply(dataclasses.replace(batch, cells=damaged), allow_gap=False)
    assert await redis_client.exists(*keys.Keys(experiment_name).all()) == 0
    assert (await flush.apply(batch, allow_gap=False))[0] == APPLIED


async def test_keyed_outcomes_fold_into_packed_cells_of_many_segments_as_into_json_cells(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """More cells than one struct.unpack reads (segments of 6,000 values: 500 cells of 12 here)
    and keyed outcomes, some for units in the last segment, some for units without a cell:
    the segments are joined before the keyed rows fold in, and store what version 5 stores."""
    stored = []
    for suffix, version in (("-v6", None), ("-v5", 5)):
        name = experiment_name + suffix
        exp = make_experiment(name)
        flush = FlushScript(redis_client, keys.Keys(name))
        await flush.load()
        agg = events.Aggregator(keys.metric_order(exp), events.binary_metrics(exp))
        for i in range(1200):
            agg.add_exposure(Exposure(f"r{i}", f"u{i}", "control", 1, 0.0, 200, 1.5, False))
        for i in range(1150, 1250):  # the last 50 exposed units, and 50 without a cell
            agg.add_outcome(Outcome(f"u{i}", "control", 1, "revenue", 2.0, 0.0, event_id=f"k{i}"))
        batch = agg.batch(producer="p", seq=1)
        assert json.loads(batch.payload)["ncells"] == 1200 and len(json.loads(batch.payload)["keyed"]) == 100
        if version is not None:
            payload, packed = cells.as_version(batch.payload, batch.cells, version)
            batch = dataclasses.replace(batch, payload=payload, cells=packed)
        assert (await flush.apply(batch, allow_gap=False))[0] == APPLIED
        k = keys.Keys(name)
        stored.append((await redis_client.hgetall(k.agg), await redis_client.hgetall(k.units)))
    (agg6, units6), (agg5, units5) = stored
    assert agg6 == agg5 and units6 == units5
    assert agg6[b"1|control|revenue|events"] == b"100" and agg6[b"1|control|units"] == b"1200"
    assert float(agg6[b"1|control|revenue|sum"]) == 100.0  # the 50 without an exposure are held


def _rich_experiment(name: str, *, covariate: bool = True) -> model.Experiment:
    """Every kind of column a cell can carry: built-ins, binary, capped, a ratio pair, a covariate."""
    spec = {
        "name": name,
        "unit": {"header": "X-User-Id"},
        "variants": [{"name": v, "upstream": f"http://{v}:1", "weight": 50} for v in ("control", "candidate")],
        "metrics": [
            {"name": "conversion", "kind": "binary"},
            {"name": "revenue", "kind": "continuous", "cap": 100},
            {"name": "clicks", "kind": "continuous"},
            {"name": "per_click", "kind": "ratio", "numerator": "revenue", "denominator": "clicks"},
        ],
        "covariate": "prior_clicks",
        "slow_request": "20ms",
    }
    if not covariate:
        del spec["covariate"]
    return model.parse(spec)


def _rich_batches(exp: model.Experiment, n: int) -> list[events.Batch]:
    import random

    rng = random.Random(4)
    out = []
    for seq in range(1, n + 1):
        agg = events.Aggregator(
            keys.metric_order(exp), events.binary_metrics(exp), events.ratio_pairs(exp), **events.column_rules(exp)
        )
        for i in range(300):
            u = keys.unit_hash(f"u{rng.randrange(60)}")
            # Most units keep their arm; the later batches are a ramp step's epoch 2 (some cells
            # still epoch 1): records in every form, brief, ramped and long (multiple exposures).
            arm = ("control", "candidate")[int(u, 16) % 2] if rng.random() < 0.9 else "candidate"
            e = (1 if seq <= n // 2 else 2) if rng.random() < 0.9 else 1
            r = rng.random()
            if r < 0.5:
                anonymous = rng.random() < 0.1
                unit = keys.unit_hash(f"anon-{seq}-{i}") if anonymous else u
                latency, error = rng.uniform(1, 40), rng.random() < 0.1
                agg.add_exposure(Exposure(f"r{seq}-{i}", unit, arm, e, 1000.0, 200, latency, error, anonymous))
            elif r < 0.65:
                agg.add_outcome(Outcome(u, arm, e, "conversion", 1.0, 1001.0))
            elif r < 0.8:
                key = f"k{rng.randrange(400)}"  # keyed: folded into the cells by flush.lua, repeats once
                agg.add_outcome(Outcome(u, arm, e, "revenue", rng.uniform(0, 80), 1001.0, event_id=key))
            elif r < 0.9:
                agg.add_outcome(Outcome(u, arm, e, "clicks", float(rng.randrange(3)), 1001.0))
            elif exp.covariate:
                agg.add_outcome(Outcome(u, arm, e, "prior_clicks", float(rng.randrange(5)), 999.0 + rng.random()))
        out.append(agg.batch(producer="p-test", seq=seq))
    return out


@pytest.mark.parametrize("covariate", [False, True])
async def test_the_code_compiled_per_batch_stores_exactly_what_the_plain_lua_stores(
    redis_client: redis.asyncio.Redis, experiment_name: str, covariate: bool
) -> None:
    # flush.lua compiles `move` and `move_record` for each batch's layout (loadstring); a Redis
    # without loadstring runs the plain functions and the unit tables. The same batches (binary,
    # capped, ratio pair, anonymous, keyed, second variants; with a covariate, move_record is
    # not used) through both: every agg field and every unit record the same, to the bit.
    plain = script.FLUSH_SCRIPT.replace("if loadstring then", "if false then")
    assert plain.count("if false then") == 1
    ttl = repr(7 * 86_400.0)
    caps = (str(keys.EVENTS_MAXLEN), str(keys.EVENTS_MAX_RAW), repr(float(keys.OUTCOME_ID_WINDOW_S)))
    stored = []
    for suffix, source in (("-compiled", script.FLUSH_SCRIPT), ("-plain", plain)):
        name = experiment_name + suffix
        k = keys.Keys(name)
        for batch in _rich_batches(_rich_experiment(name, covariate=covariate), 6):
            args = (batch.producer, str(batch.seq), "0", batch.payload, batch.events, *caps, "", ttl, batch.cells)
            reply = await redis_client.eval(source, len(k.all()), *k.all(), *args)
            assert int(reply[0]) == APPLIED, reply
        stored.append((await redis_client.hgetall(k.agg), await redis_client.hgetall(k.units)))
    (agg, units), (plain_agg, plain_units) = stored
    assert agg == plain_agg and units == plain_units
    assert sum(1 for f in units if f.endswith(b"|u")) > 50 and any(b"~mx" in f for f in agg)
    forms = {
        "long" if v[3] < 0x80 else "ramped" if v[3] < 0xC0 else "brief" for f, v in units.items() if f.endswith(b"|u")
    }
    assert covariate or forms == {"brief", "ramped", "long"}  # (with a covariate, move_record is not used)
    assert any(b"|sum_xy|" in f for f in agg) and any(f.endswith(b"|prior_clicks|sum") for f in agg) == covariate


async def test_every_cell_layout_stores_exactly_what_the_others_store(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    # The same batches, as the router sends them (version 7: the cells packed apart, each
    # unit's as one run under its record field), packed in the order of version 6, in one
    # flat JSON array (5), nested as in version 4 (a built-in's count is the cell's n), and
    # in the layout of versions 1-3 (every count spelled out), into five experiments: every
    # agg field and every unit record must come out the same.
    stored = []
    for suffix, version in (("-v7", None), ("-v6", 6), ("-v5", 5), ("-v4", 4), ("-v3", 3)):
        name = experiment_name + suffix
        exp = _rich_experiment(name)
        flush = FlushScript(redis_client, keys.Keys(name))
        await flush.load()
        for batch in _rich_batches(exp, 4):
            if version is not None:
                payload, packed = cells.as_version(batch.payload, batch.cells, version)
                batch = dataclasses.replace(batch, payload=payload, cells=packed)
            assert (await flush.apply(batch, allow_gap=False))[0] == APPLIED
        k = keys.Keys(name)
        agg = await redis_client.hgetall(k.agg)
        units = await redis_client.hgetall(k.units)
        records = {
            f: dataclasses.replace(keys.decode_unit_record(v), granule=0.0)
            for f, v in units.items()
            if f.endswith(b"|u")
        }
        pointers = {f: v for f, v in units.items() if not f.endswith(b"|u")}
        stored.append((agg, records, pointers))
    (agg4, records4, pointers4), *older = stored
    assert all(agg4 == agg and records4 == records and pointers4 == pointers for agg, records, pointers in older)
    exposures = sum(int(v) for f, v in agg4.items() if f.endswith(b"|exposures") and b"~mx" not in f)
    assert exposures > 0 and sum(int(v) for f, v in agg4.items() if f.endswith(b"|errors|events")) == exposures
    assert any(f.endswith(b"|prior_clicks|sum") for f in agg4) and any(b"|sum_xy|" in f for f in agg4)
    assert len(records4) > 50
    sent = _rich_batches(_rich_experiment(experiment_name), 1)[0]
    cut = json.loads(sent.payload)
    width = 5 + 3 + 2 * (len(cut["metrics"]) - 3) + 1  # [h, e, v, latest, n], built-ins, the others, a report time
    rows = cells.cells_of(cut, sent.cells)
    assert cut["v"] == 7 and cut["width"] == width and "cells" not in cut and cut["ncells"] == len(rows) > 50
    assert all(len(c) == width for c in rows) and rows == cells.in_runs(rows)
    assert len({c[0] for c in rows}) < len(rows)  # units with several cells, each unit's one run
    payload, packed = cells.as_version(*cells.as_version(sent.payload, sent.cells, 5), 7)  # there and back
    assert json.loads(payload) == cut and packed == sent.cells


async def test_a_batch_whose_unit_is_not_one_run_or_not_a_record_field_is_refused_whole(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    # Version 7 sends each unit's cells as one run under its record field: flush.lua reads a
    # unit's record at the run's first cell and writes it after the last, so a unit met in two
    # runs (its record read twice, the first run's move lost) or under another field is refused.
    exp = make_experiment(experiment_name)
    flush = FlushScript(redis_client, keys.Keys(experiment_name))
    await flush.load()
    recorded = [
        Exposure("r1", "u1", "control", 1, 0.0, 200, 1.0, False),
        Exposure("r2", "u2", "control", 1, 0.0, 200, 1.0, False),
        Exposure("r3", "u1", "control", 2, 0.0, 200, 1.0, False),
    ]
    batch = _batch(exp, recorded, 1)
    doc = json.loads(batch.payload)
    rows = cells.cells_of(doc, batch.cells)
    assert [(r[0], r[1]) for r in rows] == [("u1", 1), ("u1", 2), ("u2", 1)]  # u1's cells one run
    split = [rows[0], rows[2], rows[1]]
    for packed, why in (
        (b"".join(cells.Packer(doc["width"], 7).pack(r) for r in split), "the cells of unit u1|u are not one run"),
        (b"".join(cells.Packer(doc["width"], 6).pack(r) for r in rows), "unit u1 is not a record field"),
    ):
        with pytest.raises(BatchRejected, match=re.escape(why)):
            await flush.apply(dataclasses.replace(batch, cells=packed), allow_gap=False)
        assert await redis_client.exists(*keys.Keys(experiment_name).all()) == 0
    assert (await flush.apply(batch, allow_gap=False))[0] == APPLIED


@pytest.mark.parametrize("keyed", [False, True])
async def test_runs_cut_by_a_chunk_and_keyed_outcomes_in_new_cells_store_what_one_batch_per_epoch_stores(
    redis_client: redis.asyncio.Redis, experiment_name: str, keyed: bool
) -> None:
    # 1,200 units, a few exposed in a second epoch too: their runs of two cells straddle the
    # 500th cell, where flush.lua's chunks and struct segments end, and a run goes on into the
    # next (without keyed outcomes, in the next struct segment too). Keyed outcomes add cells
    # to units that have others (put back into runs by the script). One batch against the same
    # events as one batch per epoch: every agg field and every unit record (but its expiry
    # granule) the same. Integral values: exact sums in any order.
    def recorded(epoch: int | None) -> list[Event]:
        out: list[Event] = []
        for e in (1, 2):
            for i in range(1200) if e == 1 else range(495, 506):
                if epoch in (None, e):
                    out.append(Exposure(f"r{e}-{i}", f"u{i}", "control", e, 0.0, 200, float(i % 7), i % 5 == 0))
        for i in (499, 500, 1100, 1199) if keyed else ():
            if epoch in (None, 2):
                out.append(Outcome(f"u{i}", "control", 2, "revenue", 3.0, 0.0, event_id=f"k{i}"))
        return out

    stored = []
    for suffix, batches in (("-one", [recorded(None)]), ("-two", [recorded(1), recorded(2)])):
        name = experiment_name + suffix
        exp = make_experiment(name)
        flush = FlushScript(redis_client, keys.Keys(name))
        await flush.load()
        for seq, events_ in enumerate(batches, 1):
            assert (await flush.apply(_batch(exp, events_, seq), allow_gap=False))[0] == APPLIED
        k = keys.Keys(name)
        units = await redis_client.hgetall(k.units)
        records = {
            f: dataclasses.replace(keys.decode_unit_record(v), granule=0.0)
            for f, v in units.items()
            if f.endswith(b"|u")
        }
        stored.append((await redis_client.hgetall(k.agg), records, {f: v for f, v in units.items() if b"|" not in f}))
    one, two = stored
    assert one == two
    agg, records, pointers = one
    assert agg[b"1|control|units"] == b"1200" and agg[b"1|control|exposures"] == b"1211"
    assert agg.get(b"1|control|revenue|sum") == (b"12" if keyed else None) and len(records) == 1200
    assert records[b"u500|u"].state[0] == 2 and pointers[b"u500"] == b"2|control" and pointers[b"u1100"] == b"1|control"
