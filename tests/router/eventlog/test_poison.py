"""Issue 7: one outcome cannot poison the event log, a Redis that restarts empty is
reported, and Redis memory stays bounded. Real router, real sockets, real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
import redis.asyncio

from abrouter import cli
from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.router.eventlog import spill
from abrouter.router.eventlog.log import EventLog
from abrouter.router.redis_server import RedisServer
from tests.router.conftest import MakeRouter, RouterUnderTest


async def expose(r: RouterUnderTest, user: str | None) -> str:
    headers = {"X-User-Id": user} if user is not None else {}
    resp = await r.client.post("/predict", headers=headers, data=b"{}")
    assert resp.status == 200
    resp.release()
    return resp.headers["X-AB-Request-Id"]


async def post_outcomes(r: RouterUnderTest, body: object) -> tuple[int, dict]:
    resp = await r.client.post("/abrouter/outcomes", json=body)
    return resp.status, await resp.json()


# ------------------------------------------------------------------ #1 poison


@pytest.mark.parametrize("value", [1e200, -1e16, 1.7e308])
async def test_an_absurd_outcome_value_is_a_422_naming_the_field(make_router: MakeRouter, value: float) -> None:
    r = await make_router()
    await expose(r, "user2")
    status, body = await post_outcomes(r, {"unit": "user2", "metric": "revenue", "value": value})
    assert status == 422
    message = f"must be at most 1e+15 in magnitude, got {value:g}"
    assert body["items"] == [{"index": 0, "field": "value", "error": message}]
    status, _ = await post_outcomes(r, {"unit": "user2", "metric": "revenue", "value": 1e15})
    assert status == 202  # the documented bound itself is fine


async def test_a_poisoned_unit_state_refuses_its_batch_whole_and_a_replay_counts_it_exactly_once(
    make_router: MakeRouter, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    """A state holding 1e200 (written by an older router) made phase 2 fail half-way."""
    r = await make_router()
    await expose(r, "user2")
    await r.settle()
    h = keys.unit_hash("user2")
    stratum = (await redis_client.hget(r.keys.units, h)).decode()
    field = f"{h}|u"  # the unit's record
    good = await redis_client.hget(r.keys.units, field)
    epoch, variant = stratum.split("|")
    record = [int(epoch), variant, 0, stratum, 0, 0, [1, 0, 1.0, 0, 1e200]]
    poison = await redis_client.eval("return cmsgpack.pack(cjson.decode(ARGV[1]))", 0, json.dumps(record))
    await redis_client.hset(r.keys.units, field, poison)

    for i in range(10):
        await expose(r, f"innocent-{i}")
    await expose(r, "user2")
    await r.settle()
    # The batch with user2 was refused whole: nothing of it reached Redis (no partial write,
    # not its innocent exposures); the batches without user2 applied.
    stats = r.client.lane.eventlog.stats
    assert stats.quarantined >= 1 and stats.dropped == 0
    assert sum(s.exposures for s in (await r.strata()).values()) == 1 + 11 - stats.quarantined
    assert await redis_client.hget(r.keys.units, field) == poison

    # Fixed by hand; the quarantine file is replayed twice (two copies): counted once.
    await redis_client.hset(r.keys.units, field, good)
    exp = r.client.lane.table.experiment
    await r.client.close()  # the router closes its files
    (quarantined,) = (tmp_path / "spill").glob(f"*{spill.QUARANTINE_SUFFIX}")
    copy = quarantined.with_name(quarantined.name.replace(spill.QUARANTINE_SUFFIX, ".copy" + spill.SUFFIX))
    shutil.copy(quarantined, copy)
    quarantined.rename(quarantined.with_suffix(spill.SUFFIX))
    for _ in range(2):
        log = EventLog(redis_url=r.redis_url, experiment=exp, spill_dir=tmp_path / "spill", flush_interval_s=60)
        await log.start()
        await log.close()
    strata = await r.strata()
    assert sum(s.exposures for s in strata.values()) == 12
    assert sum(s.units for s in strata.values()) == 11


async def test_a_sum_that_would_overflow_is_refused_at_record_time_and_no_batch_is_dropped(
    redis_url: str, experiment_name: str, tmp_path: Path, redis_client: redis.asyncio.Redis
) -> None:
    exp = _experiment(experiment_name)
    log = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path, flush_interval_s=60)
    await log.start()
    try:
        from abrouter.router.eventlog.events import Exposure, Outcome

        log.record_exposure(
            Exposure("r1", "u1", "control", 1, time.time(), 200, 1.0, False)
        )  # sums count exposed units
        ok = Outcome("u1", "control", 1, "revenue", 1e15, time.time())
        assert log.record_outcome(ok)
        for value in (1e308, float("inf")):
            with pytest.raises(ValueError, match="magnitude"):
                log.record_outcome(Outcome("u1", "control", 1, "revenue", value, time.time()))
        await log.flush()
        assert log.stats.dropped == 0 and log.stats.quarantined == 0
    finally:
        await log.close()
    revenue = keys.decode_agg(await redis_client.hgetall(keys.Keys(experiment_name).agg))[(1, "control")]
    assert revenue.metrics["revenue"].sum == 1e15


def _experiment(name: str) -> model.Experiment:
    return model.parse(
        {
            "name": name,
            "unit": {"header": "X-User-Id"},
            "metrics": [{"name": "revenue", "kind": "continuous"}],
            "variants": [{"name": v, "upstream": f"http://{v}:8080", "weight": 50} for v in ("control", "candidate")],
        }
    )


# --------------------------------------------------------------- #4 empty restart


async def test_a_redis_that_restarts_empty_is_detected_counted_and_reported_by_analyze(
    make_router: MakeRouter, redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = await make_router(redis=redis_server.url)
    await expose(r, "b0")
    await r.settle()
    gone = await make_router(redis=redis_server.url)  # another replica, since rescheduled
    for i in range(40):
        await expose(gone, f"u{i}")
    await gone.settle()
    await gone.client.close()
    ready = await (await r.client.get("/abrouter/readyz")).json()
    assert "data_incomplete_since" not in ready

    redis_server.kill()
    for path in redis_server.data_dir.iterdir():  # an emptyDir after a reschedule
        if path.is_dir():
            shutil.rmtree(path)
        elif path.suffix in (".aof", ".rdb"):
            path.unlink()
    lost_at = time.time()
    await asyncio.to_thread(redis_server.restart)
    for i in range(40, 50):
        await expose(r, f"u{i}")
    await r.settle(timeout_s=20)
    await r.client.lane.eventlog.flush()  # the epochs re-registered by the reset land
    await r.settle()

    ready = await (await r.client.get("/abrouter/readyz")).json()
    assert ready["redis"] == "up" and ready["redis_resets"] == 1
    assert lost_at - 1 <= ready["data_incomplete_since"] <= time.time()
    metrics = await (await r.client.get("/abrouter/metrics")).text()
    assert "abrouter_redis_resets_total" in metrics and _sample(metrics, "abrouter_redis_resets_total") == 1
    async with redis.asyncio.Redis.from_url(redis_server.url) as client:
        assert keys.decode_epochs(await client.hgetall(r.keys.epochs))  # max_duration has its start again

    config = tmp_path / "experiment.yaml"
    analyze = ["analyze", "--config", str(config), "--redis-url", redis_server.url]
    assert await asyncio.to_thread(cli.main, analyze) == 0
    assert "DATA INCOMPLETE: Redis lost the data recorded before" in capsys.readouterr().out
    assert await asyncio.to_thread(cli.main, [*analyze, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data_incomplete_since"] == pytest.approx(ready["data_incomplete_since"])
    # What remains: the 10 new units and b0, which r re-sent from its retained batches.
    assert sum(v["units"] for v in doc["variants"]) == 11


def _sample(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])


# ---------------------------------------------------------------- #7 bounded memory


async def test_anonymous_requests_keep_no_unit_state_but_count_as_units(
    make_router: MakeRouter, redis_client: redis.asyncio.Redis
) -> None:
    r = await make_router()
    rids = [await expose(r, None) for _ in range(200)]
    await r.settle()
    assert await redis_client.hlen(r.keys.units) == 0
    strata = await r.strata()
    assert sum(s.units for s in strata.values()) == 200 and sum(s.exposures for s in strata.values()) == 200
    # An outcome for an anonymous request is still credited, and a second one extends it.
    for value in (2.0, 3.0):
        status, _ = await post_outcomes(r, {"request_id": rids[0], "metric": "revenue", "value": value})
        assert status == 202
        await r.settle()
    revenue = [s.metrics["revenue"] for s in (await r.strata()).values() if s.metrics["revenue"].events]
    assert [(m.sum, m.sum_sq, m.events) for m in revenue] == [(5.0, 25.0, 2)]
    assert sum(s.units for s in (await r.strata()).values()) == 200


async def test_unit_state_expires_after_outcome_ttl(make_router: MakeRouter, redis_client: redis.asyncio.Redis) -> None:
    r = await make_router(outcome_ttl="1s")
    for i in range(30):
        await expose(r, f"old-{i}")
    await r.settle()
    # Per unit: its latest stratum and its record (first exposure, state, ...).
    assert await redis_client.hlen(r.keys.units) == 60
    await asyncio.sleep(1.2)  # > ttl + one granule (ttl / 8): a field may expire that late, never early
    await expose(r, "new")
    await r.settle()
    assert await redis_client.hlen(r.keys.units) == 2  # only the new unit's
    assert await redis_client.zcard(r.keys.unit_seen) == 1  # its h|u, for both its fields


async def test_the_spill_file_is_capped_and_what_it_refuses_is_counted(
    redis_url: str, experiment_name: str, tmp_path: Path
) -> None:
    from abrouter.router.eventlog.events import Exposure
    from abrouter.router.redis_server import free_port

    exp = _experiment(experiment_name)
    down = f"redis://127.0.0.1:{free_port()}/0"
    log = EventLog(redis_url=down, experiment=exp, spill_dir=tmp_path, flush_interval_s=60, spill_max_bytes=20_000)
    await log.start()
    try:
        for round_ in range(20):
            for i in range(20):
                log.record_exposure(Exposure(f"r{round_}-{i}", f"u{i}", "control", 1, 0.0, 200, 1.0, False))
            await log.flush()
        stats = log.stats
        assert 0 < stats.spill_bytes <= 20_000
        assert stats.spill_full_dropped > 0 and stats.dropped == stats.spill_full_dropped
        assert stats.spilled + stats.spill_full_dropped == 400
    finally:
        await log.close()


async def test_a_redis_password_in_the_query_reaches_no_repr_and_no_log_line(
    experiment_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 7 #10 (`abrouter.redact.mask_url` masks ``password=`` too)."""
    from abrouter.router.redis_server import free_port

    caplog.set_level(logging.DEBUG)
    url = f"redis://127.0.0.1:{free_port()}/0?password=hunter2"  # nothing listens: a warning names the URL
    log = EventLog(redis_url=url, experiment=_experiment(experiment_name), spill_dir=tmp_path, flush_interval_s=60)
    await log.start()
    await log.close()
    assert "password=***" in caplog.text and "hunter2" not in caplog.text and "hunter2" not in repr(log)
