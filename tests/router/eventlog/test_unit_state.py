"""How flush.lua stores a unit's state: MessagePack, exact, and JSON states still read.

Real Redis, real flush.lua, through the `EventLog`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import redis.asyncio

from abrouter.contract import keys
from abrouter.router.errors import BatchRejected
from abrouter.router.eventlog import script
from abrouter.router.eventlog.events import Aggregator, Exposure, Outcome, binary_metrics
from abrouter.router.eventlog.log import EventLog
from abrouter.router.eventlog.script import FlushScript
from tests.router.eventlog.test_eventlog import make_experiment

#: Values whose running sum needs every bit of a double (and no float32 would hold).
AWKWARD = (0.1, 1 / 3, 123456.789, 1e-7, 2.0**-30, 7.000000000000001, -0.2)


async def test_a_units_state_is_exact_across_batches_and_stored_as_messagepack(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    exp = make_experiment(experiment_name)
    h = keys.unit_hash("u")
    log = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path)
    await log.start()
    log.record_exposure(Exposure("r0", h, "control", 1, 1000.0, 200, 10.0, False))
    total = 0.0
    for value in AWKWARD:  # one batch each: every step goes through the stored state
        log.record_outcome(Outcome(h, "control", 1, "revenue", value, 1001.0))
        await log.flush()
        total += value
    await log.close()
    k = keys.Keys(experiment_name)
    record = keys.decode_unit_record(await redis_client.hget(k.units, f"{h}|u"))  # MessagePack, exact
    assert record.first == record.latest == (1, "control") and not record.multiple
    assert record.state[1 + keys.metric_order(exp).index("revenue")] == total
    revenue = keys.decode_agg(await redis_client.hgetall(k.agg))[(1, "control")].metrics["revenue"]
    assert (revenue.sum, revenue.sum_sq, revenue.sum_xn) == (total, total * total, total)


async def test_a_state_written_as_json_moves_on_and_is_rewritten(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    """States written before MessagePack (JSON, 17 digits) are read as they are, and a unit
    stored before records (h|f, h|e|v, its member h|f) is rewritten as one."""
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    h = keys.unit_hash("old")
    state = {h: "1|control", f"{h}|f": "1|control", f"{h}|1|control": "[1,0,10,0,0.1]"}
    await redis_client.hset(k.units, mapping=state)
    await redis_client.set(k.metrics, '["errors","latency_ms","conversion","revenue"]')
    await redis_client.hset(
        k.agg,
        mapping={
            "1|control|units": 1,
            "1|control|exposures": 1,
            "1|control|exposures_sq": 1,
            "1|control|revenue|sum": 0.1,
            "1|control|revenue|sum_sq": 0.1 * 0.1,
        },
    )
    log = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path)
    await log.start()
    log.record_outcome(Outcome(h, "control", 1, "revenue", 0.2, 1001.0))
    await log.close()
    revenue = keys.decode_agg(await redis_client.hgetall(k.agg))[(1, "control")].metrics["revenue"]
    assert (revenue.sum, revenue.sum_sq) == (0.1 + 0.2, (0.1 + 0.2) ** 2)
    assert sorted(await redis_client.hkeys(k.units)) == [h.encode(), f"{h}|u".encode()]  # the old fields went
    record = keys.decode_unit_record(await redis_client.hget(k.units, f"{h}|u"))
    columns = json.loads(await redis_client.get(k.metrics))
    assert record.first == record.latest == (1, "control")
    assert record.state[0] == 1 and record.state[1 + columns.index("revenue")] == 0.1 + 0.2
    assert set(await redis_client.zrange(k.unit_seen, 0, -1)) == {f"{h}|u".encode()}


async def test_a_units_one_member_expires_all_its_fields_and_older_members_wait_for_it(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """unit-seen: a unit's h|f member stands for all its fields; a member of one field (data
    written before, or an outcome held before its exposure) deletes it only once its unit's
    h|f member is due too, and meanwhile takes the unit's score."""
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k, unit_ttl_s=100.0)
    await script.load()
    seconds, _ = await redis_client.time()
    old, alive = keys.unit_hash("old"), keys.unit_hash("alive")
    await redis_client.hset(
        k.units,
        mapping={
            old: "1|control",
            f"{old}|f": "1|control",
            f"{old}|1|control": "[1,0,10,0,0]",
            f"{old}|1|control|c": "5",
            alive: "1|control",
            f"{alive}|f": "1|control",
            f"{alive}|1|control": "[1,0,10,0,0]",
        },
    )
    # old: one member, due. alive: its h|f fresh, the member of its state (written before) due.
    await redis_client.zadd(k.unit_seen, {f"{old}|f": seconds - 500, f"{alive}|1|control": seconds - 500})
    await redis_client.zadd(k.unit_seen, {f"{alive}|f": seconds + 50})
    batch = Aggregator(keys.metric_order(exp), binary_metrics(exp)).batch(producer="p", seq=1)
    await script.apply(batch, allow_gap=True)
    assert sorted(await redis_client.hkeys(k.units)) == sorted(
        f.encode() for f in (alive, f"{alive}|f", f"{alive}|1|control")
    )
    assert dict(await redis_client.zrange(k.unit_seen, 0, -1, withscores=True)) == {
        f"{alive}|f".encode(): seconds + 50,
        f"{alive}|1|control".encode(): seconds + 50,
    }


async def test_a_units_record_expires_with_its_latest_exposure(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    """unit-seen: a record's member h|u stands for h|u and h; a unit still written stays."""
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k, unit_ttl_s=100.0)
    await script.load()
    agg = Aggregator(keys.metric_order(exp), binary_metrics(exp))
    for unit in ("old", "alive"):
        agg.add_exposure(Exposure(f"r-{unit}", unit, "control", 1, 0.0, 200, 5.0, False))
    await script.apply(agg.batch(producer="p", seq=1), allow_gap=True)
    assert sorted(await redis_client.hkeys(k.units)) == sorted(
        f.encode() for u in ("old", "alive") for f in (u, f"{u}|u")
    )
    seconds, _ = await redis_client.time()
    await redis_client.zadd(k.unit_seen, {"old|u": seconds - 500})  # not written for longer than the ttl
    await script.apply(
        Aggregator(keys.metric_order(exp), binary_metrics(exp)).batch(producer="p", seq=2), allow_gap=True
    )
    assert sorted(await redis_client.hkeys(k.units)) == [b"alive", b"alive|u"]
    assert await redis_client.zrange(k.unit_seen, 0, -1) == [b"alive|u"]


async def test_an_outcome_held_before_records_is_credited_with_the_exposure_and_moved_into_its_record(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """An outcome that reached Redis before its unit's exposure, stored before records (a
    bare state h|e|v, no h, no h|f), enters the sums with the exposure, once, from the record."""
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k, unit_ttl_s=0.0)
    await script.load()
    columns = keys.metric_order(exp)
    held = [0.0] * (1 + len(columns))
    held[1 + columns.index("revenue")] = 7.5
    packed = await redis_client.eval("return cmsgpack.pack(cjson.decode(ARGV[1]))", 0, json.dumps(held))
    await redis_client.hset(k.units, "u|1|control", packed)
    await redis_client.set(k.metrics, json.dumps(columns))
    agg = Aggregator(keys.metric_order(exp), binary_metrics(exp))
    agg.add_exposure(Exposure("r", "u", "control", 1, 0.0, 200, 5.0, False))
    await script.apply(agg.batch(producer="p", seq=1), allow_gap=True)
    revenue = keys.decode_agg(await redis_client.hgetall(k.agg))[(1, "control")].metrics["revenue"]
    assert (revenue.sum, revenue.sum_xn) == (7.5, 7.5)
    assert sorted(await redis_client.hkeys(k.units)) == [b"u", b"u|u"]
    assert keys.decode_unit_record(await redis_client.hget(k.units, "u|u")).state[1 + columns.index("revenue")] == 7.5


@pytest.mark.parametrize(
    "damage",
    [
        b"garbage",
        b"\x01\x00\x00\x00control\x00\x00\x00",
        b"\xff\xff\xff\xffcontrol\x00" + struct.pack("<d", 0.0) + b"\x00\x00\x00",  # brief, a state of 3 bytes
        b"\xff\xff\xff\xffcontrol",  # brief, no end to v
        # [ramped] 4 bytes more than a brief record: a first epoch below 1, a latest epoch 0
        b"\xff\xff\xff\xffcontrol\x00" + struct.pack("<id6d", 2, 0.0, 1.0, *[0.0] * 5),
        struct.pack("<i", -(2**30 + 1)) + b"control\x00" + struct.pack("<id6d", 0, 0.0, 1.0, *[0.0] * 5),
    ],
)
async def test_a_corrupt_record_refuses_the_batch_naming_its_field_and_writes_nothing(
    redis_client: redis.asyncio.Redis, experiment_name: str, damage: bytes
) -> None:
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k)
    await script.load()
    await redis_client.hset(k.units, "u|u", damage)
    agg = Aggregator(keys.metric_order(exp), binary_metrics(exp))
    for unit in ("a", "u", "b"):
        agg.add_exposure(Exposure(f"r-{unit}", unit, "control", 1, 0.0, 200, 5.0, False))
    with pytest.raises(BatchRejected, match=r"corrupt unit record in .*units field u\|u"):
        await script.apply(agg.batch(producer="p", seq=1), allow_gap=False)
    assert await redis_client.hgetall(k.units) == {b"u|u": damage}
    assert await redis_client.exists(k.agg, k.producers, k.unit_seen) == 0
    with pytest.raises(ValueError, match="not a unit record"):
        keys.decode_unit_record(damage)


async def test_a_record_from_before_a_column_was_added_reads_zeros_for_it_and_grows(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """A record holds the columns there were when it was written: a batch after a metric was
    added reads the new column as 0 and writes the record whole (the column order only grows)."""
    narrow, wide = make_experiment(experiment_name), make_experiment(experiment_name, extra_metric=True)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k)
    await script.load()
    for seq, exp, outcome in (
        (1, narrow, Outcome("u1", "control", 1, "revenue", 2.5, 0.0)),
        (2, wide, Outcome("u1", "control", 1, "clicks", 4.0, 0.0)),
    ):
        agg = Aggregator(keys.metric_order(exp), binary_metrics(exp))
        agg.add_exposure(Exposure(f"r{seq}", "u1", "control", 1, 0.0, 200, 5.0, False))
        agg.add_outcome(outcome)
        await script.apply(agg.batch(producer="p", seq=seq), allow_gap=False)
        if seq == 1:
            raw = await redis_client.hget(k.units, "u1|u")
            assert raw[3] >= 0x80  # the brief form (negative epoch)
            short = keys.decode_unit_record(raw)
    record = keys.decode_unit_record(await redis_client.hget(k.units, "u1|u"))
    order = json.loads(await redis_client.get(k.metrics))
    assert len(short.state) == len(order) == len(record.state) - 1  # n_u, then one per column
    assert record.state[0] == 2 and record.state[1 + order.index("revenue")] == 2.5
    assert record.state[1 + order.index("clicks")] == 4.0
    assert await redis_client.hget(k.agg, "1|control|clicks|sum_xn") == b"8"  # x_u = 4, n_u = 2


@pytest.mark.parametrize(
    ("k", "bad", "brief"),
    [
        (6, float("nan"), False),
        (6, float("inf"), False),
        (2, float("-inf"), False),
        (6, float("nan"), True),
        (2, float("inf"), True),
        (6, float("-inf"), "ramped"),
        (2, float("nan"), "ramped"),
    ],
)
async def test_a_record_holding_a_number_that_is_not_finite_is_corrupt(
    redis_client: redis.asyncio.Redis, experiment_name: str, k: int, bad: float, brief: bool | str
) -> None:
    """Whole (k = 6: n_u and the experiment's five columns) or from before columns were added,
    in either form."""
    exp = make_experiment(experiment_name)
    k_ = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k_)
    await script.load()
    head = struct.pack("<i", 1) + b"control\0" + b"\0" + b"1|control\0" + struct.pack("<ddH", 0.0, 0.0, k)
    if brief:
        head = struct.pack("<i", -1) + b"control\0" + struct.pack("<d", 0.0)
    if brief == "ramped":  # first epoch 1, latest 1 (its own cell's: the common cell)
        head = struct.pack("<i", -(keys.RAMPED_EPOCH_OFFSET + 1)) + b"control\0" + struct.pack("<id", 1, 0.0)
    record = head + struct.pack(f"<{k}d", 1.0, *[0.0] * (k - 2), bad)
    assert keys.decode_unit_record(record).state[-1] != 0  # a record in form, with that number last
    await redis_client.hset(k_.units, "u|u", record)
    agg = Aggregator(keys.metric_order(exp), binary_metrics(exp))
    agg.add_exposure(Exposure("r-u", "u", "control", 1, 0.0, 200, 5.0, False))
    with pytest.raises(BatchRejected, match=r"corrupt unit record in .*units field u\|u"):
        await script.apply(agg.batch(producer="p", seq=1), allow_gap=False)
    assert await redis_client.exists(k_.agg, k_.producers, k_.unit_seen) == 0


def long_record(e: int, v: str, latest: str, state: list[float], *, multiple: int = 0, ctime: float = 0.0) -> bytes:
    """A record in the long form, as flush.lua wrote every record before the brief form."""
    head = struct.pack("<i", e) + v.encode() + b"\0" + bytes([multiple]) + latest.encode() + b"\0"
    return head + struct.pack("<ddH", 1.0, ctime, len(state)) + struct.pack(f"<{len(state)}d", *state)


async def test_a_long_record_from_before_the_brief_form_is_read_and_rewritten_brief_when_touched(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """A common unit (latest exposure its first, one variant, no covariate time) is written in
    the brief form; one stored long before moves on exactly and is rewritten brief; one that is
    not common (a multiple exposure) stays long; an untouched one is left as it was."""
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    columns = keys.metric_order(exp)
    await redis_client.set(k.metrics, json.dumps(columns))
    state = [2.0] + [0.0] * len(columns)
    state[1 + columns.index("revenue")] = 0.1
    stored = {
        "old|u": long_record(1, "control", "1|control", state),
        "mx|u": long_record(1, "control", "1|candidate", state, multiple=1),
        "idle|u": long_record(1, "control", "1|control", state),
    }
    await redis_client.hset(k.units, mapping=stored)
    script = FlushScript(redis_client, k)
    await script.load()
    agg = Aggregator(columns, binary_metrics(exp))
    for unit in ("old", "mx", "new"):
        agg.add_exposure(Exposure(f"r-{unit}", unit, "control", 1, 0.0, 200, 5.0, False))
        agg.add_outcome(Outcome(unit, "control", 1, "revenue", 1 / 3, 0.0))
    await script.apply(agg.batch(producer="p", seq=1), allow_gap=False)
    raw = {f: await redis_client.hget(k.units, f) for f in ("old|u", "mx|u", "new|u", "idle|u")}
    assert [r[3] >= 0x80 for r in raw.values()] == [True, False, True, False]  # brief: a negative epoch
    assert raw["idle|u"] == stored["idle|u"]
    old, new = keys.decode_unit_record(raw["old|u"]), keys.decode_unit_record(raw["new|u"])
    assert old.first == old.latest == new.first == new.latest == (1, "control")
    assert not old.multiple and old.covariate_time is None
    assert old.state[0] == 3 and old.state[1 + columns.index("revenue")] == 0.1 + 1 / 3
    assert new.state[0] == 1 and new.state[1 + columns.index("revenue")] == 1 / 3
    assert len(raw["old|u"]) < len(stored["old|u"])
    mx = keys.decode_unit_record(raw["mx|u"])
    assert mx.multiple and mx.latest == (1, "control") and mx.state[0] == 3


# ------------------------------------------------------------------ [ramped] the ramped form


def form(raw: bytes) -> str:
    """Which form a stored record is in, by its fourth byte (docs/storage.md)."""
    return "long" if raw[3] < 0x80 else "ramped" if raw[3] < 0xC0 else "brief"


def as_long(record: keys.UnitRecord) -> bytes:
    """`record` in the long form, as a router from before the brief and ramped forms wrote it."""
    e, v = record.first or (0, "")
    latest = f"{record.latest[0]}|{record.latest[1]}" if record.latest else ""
    return long_record(
        e, v, latest, list(record.state), multiple=int(record.multiple), ctime=record.covariate_time or 0.0
    )


#: Steps of one unit (and a companion, to share each batch): (epoch, variant) of an exposure (or
#: None: an outcome alone, in the epoch given), and the form its record is in afterwards.
RAMP_STEPS: list[tuple[tuple[int, str], bool, str]] = [
    ((1, "control"), True, "brief"),  # first exposure
    ((2, "control"), True, "ramped"),  # a ramp step: the same variant in epoch 2
    ((2, "control"), False, "ramped"),  # an outcome alone, in the latest epoch
    ((2, "control"), True, "ramped"),  # back again in epoch 2 (the common returning cell)
    ((1, "control"), True, "brief"),  # a router still in epoch 1: latest is the first again
    ((3, "control"), True, "ramped"),
    ((3, "candidate"), True, "long"),  # another variant: a multiple exposure
]


@pytest.mark.parametrize(("compiled", "fillers"), [(True, 0), (True, 20), (False, 0)])
async def test_a_unit_back_in_a_later_epoch_of_its_variant_is_stored_ramped_and_reads_as_the_long_form(
    redis_client: redis.asyncio.Redis, experiment_name: str, compiled: bool, fillers: int
) -> None:
    """A unit whose latest exposure is its first's variant in another epoch (after a ramp step)
    is stored in the ramped form, and moves between the forms as its latest exposure moves.
    Beside it, a twin experiment gets the same batches with every record rewritten long before
    each (what a router before the brief and ramped forms would have stored): the same agg to
    the bit, the same records and pointers after every batch. `compiled`: flush.lua as Redis runs
    it (`move_record`), or without loadstring (the unit tables and `pack_unit`). `fillers`: units
    of brief records before them in each batch, so that the ramped records are not among the
    batch's first 16, and `move_record` is compiled without the ramped form's code until it
    meets one (flush.lua's `again`)."""
    exp = make_experiment(experiment_name)
    columns = keys.metric_order(exp)
    source = script.FLUSH_SCRIPT if compiled else script.FLUSH_SCRIPT.replace("if loadstring then", "if false then")
    caps = (str(keys.EVENTS_MAXLEN), str(keys.EVENTS_MAX_RAW), repr(float(keys.OUTCOME_ID_WINDOW_S)))
    twins = [keys.Keys(experiment_name), keys.Keys(experiment_name + "-long")]
    for seq, ((epoch, variant), exposed, want) in enumerate(RAMP_STEPS, 1):
        agg = Aggregator(columns, binary_metrics(exp))
        for i in range(fillers):
            agg.add_exposure(Exposure(f"r{seq}-f{i}", f"f{i}", "control", 1, 0.0, 200, 5.0, False))
        for unit in ("u", "w"):
            if exposed:
                agg.add_exposure(Exposure(f"r{seq}-{unit}", unit, variant, epoch, 0.0, 200, 5.0, seq % 2 == 0))
            agg.add_outcome(Outcome(unit, variant, epoch, "revenue", AWKWARD[seq % len(AWKWARD)], 0.0))
        batch = agg.batch(producer="p", seq=seq)
        args = (batch.producer, str(batch.seq), "0", batch.payload, batch.events, *caps, "", "0", batch.cells)
        for k in twins:
            if k is twins[1]:  # every record long, as the older router wrote them
                for f, raw in (await redis_client.hgetall(k.units)).items():
                    if f.endswith(b"|u"):
                        await redis_client.hset(k.units, f, as_long(keys.decode_unit_record(raw)))
            reply = await redis_client.eval(source, len(k.all()), *k.all(), *args)
            assert int(reply[0]) == 1, reply
        raw = await redis_client.hget(twins[0].units, "u|u")
        assert form(raw) == want, (seq, raw)
        record = keys.decode_unit_record(raw)
        assert record.first == (1, "control") and record.latest == (epoch, variant)
        assert record.multiple == (want == "long")
        stored = []
        for k in twins:
            units = await redis_client.hgetall(k.units)
            records = {f: keys.decode_unit_record(v) for f, v in units.items() if f.endswith(b"|u")}
            stored.append(
                (await redis_client.hgetall(k.agg), records, {f: v for f, v in units.items() if b"|" not in f})
            )
        assert stored[0] == stored[1], seq
        assert stored[0][2][b"u"] == f"{epoch}|{variant}".encode()
    agg_ = keys.decode_agg(await redis_client.hgetall(twins[0].agg))
    assert set(agg_) == {(1, "control"), (1, "control~mx")}  # intent-to-treat: all in the first stratum
    assert agg_[(1, "control")].units == 2 + fillers
    assert agg_[(1, "control")].exposures == 2 * 6 + fillers * len(RAMP_STEPS)


def test_a_ramped_record_is_four_bytes_more_than_whole_doubles_to_a_reader_of_the_brief_form() -> None:
    # What keeps a flush.lua (or keys.py) from before the ramped form from misreading it: its
    # first four bytes are negative, so it is read as a brief record, whose state then is not
    # a whole number of doubles, and the record is refused as corrupt (the batch quarantined).
    state = [3.0, 0.0, 12.5, 1.0, 0.1]
    raw = struct.pack("<i", -(keys.RAMPED_EPOCH_OFFSET + 1)) + b"control\0" + struct.pack("<id", 2, 0.0)
    raw += struct.pack(f"<{len(state)}d", *state)
    record = keys.decode_unit_record(raw)
    assert (record.first, record.latest, record.multiple, record.covariate_time) == (
        (1, "control"),
        (2, "control"),
        False,
        None,
    )
    assert record.state == tuple(state)
    after_v = len(struct.pack("<i", 0) + b"control\0")
    assert (len(raw) - after_v - 8) % 8 == 4  # as the brief form: not whole doubles


async def test_a_long_record_ramped_in_meaning_is_rewritten_ramped_when_a_batch_moves_it(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Records stored long by an older router whose latest exposure is the first's variant in
    a later epoch are rewritten in the ramped form by a cell of their latest epoch (exposure or
    outcome alone) or of another epoch; a brief record of an epoch past the ramped form's range
    (its fourth byte in the ramped range) is still read by its length."""
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    columns = keys.metric_order(exp)
    await redis_client.set(k.metrics, json.dumps(columns))
    state = [2.0] + [0.0] * len(columns)
    state[1 + columns.index("revenue")] = 0.1
    huge = keys.RAMPED_EPOCH_OFFSET + 5
    stored = {
        "exposed|u": long_record(1, "control", "2|control", state),
        "outcome|u": long_record(1, "control", "2|control", state),
        "third|u": long_record(1, "control", "2|control", state),
        "huge|u": struct.pack("<i", -huge) + b"control\0" + struct.pack(f"<d{len(state)}d", 1.0, *state),
    }
    await redis_client.hset(k.units, mapping=stored)
    assert form(stored["huge|u"]) == "ramped" and keys.decode_unit_record(stored["huge|u"]).first == (huge, "control")
    script_ = FlushScript(redis_client, k)
    await script_.load()
    agg = Aggregator(columns, binary_metrics(exp))
    agg.add_exposure(Exposure("r1", "exposed", "control", 2, 0.0, 200, 5.0, False))
    agg.add_outcome(Outcome("outcome", "control", 2, "revenue", 1 / 3, 0.0))
    agg.add_exposure(Exposure("r2", "third", "control", 3, 0.0, 200, 5.0, False))
    agg.add_exposure(Exposure("r3", "huge", "control", huge, 0.0, 200, 5.0, False))
    await script_.apply(agg.batch(producer="p", seq=1), allow_gap=False)
    raw = {f: await redis_client.hget(k.units, f) for f in stored}
    assert [form(r) for r in raw.values()] == ["ramped", "ramped", "ramped", "ramped"]
    records = {f: keys.decode_unit_record(r) for f, r in raw.items()}
    assert records["exposed|u"].latest == records["outcome|u"].latest == (2, "control")
    assert records["third|u"].latest == (3, "control") and records["exposed|u"].state[0] == 3
    assert records["outcome|u"].state[1 + columns.index("revenue")] == 0.1 + 1 / 3
    assert records["huge|u"].first == records["huge|u"].latest == (huge, "control")  # still brief, by its length
    assert len(raw["huge|u"]) == len(stored["huge|u"]) and records["huge|u"].state[0] == 3
    assert all(len(raw[f]) == len(stored[f]) - 17 for f in ("exposed|u", "outcome|u", "third|u"))
