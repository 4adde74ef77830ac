"""flush.lua credits a unit once, to its first exposure; multiple exposures are counted.

Real Redis, real flush.lua, through the `EventLog` and the analyzer's reader.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import redis.asyncio

from abrouter.analysis import analyzer, reader
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import keys
from abrouter.router.eventlog.events import Exposure, Outcome
from abrouter.router.eventlog.log import EventLog
from tests.router.eventlog.test_eventlog import make_experiment


def exposure(unit: str, variant: str, epoch: int, i: int) -> Exposure:
    return Exposure(f"r{unit}{i}", keys.unit_hash(unit), variant, epoch, 1000.0 + i, 200, 10.0, False)


def outcome(unit: str, variant: str, epoch: int, value: float) -> Outcome:
    return Outcome(keys.unit_hash(unit), variant, epoch, "revenue", value, 1500.0)


async def test_a_ramped_user_stays_in_its_first_variant_and_is_flagged(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    exp = make_experiment(experiment_name)
    log = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 95, "candidate": 5}, since=1000.0)
    log.register_epoch(2, {"control": 75, "candidate": 25}, since=2000.0)
    # u1: control in epoch 1, then moved to the candidate by the ramp (epoch 2).
    # u2: control in both epochs. u3: first seen in epoch 2, candidate.
    log.record_exposure(exposure("u1", "control", 1, 0))
    log.record_exposure(exposure("u2", "control", 1, 1))
    log.record_outcome(outcome("u1", "control", 1, 2.0))
    await log.flush()
    log.record_exposure(exposure("u1", "candidate", 2, 2))
    log.record_outcome(outcome("u1", "candidate", 2, 5.0))  # credited as the router does: latest
    log.record_exposure(exposure("u2", "control", 2, 3))
    log.record_exposure(exposure("u3", "candidate", 2, 4))
    log.record_exposure(exposure("u3", "candidate", 2, 5))
    log.record_outcome(outcome("u3", "candidate", 2, 1.0))
    await log.close()

    data = await reader.read(redis_client, exp)
    control, candidate = data.control, data.arm("candidate")
    assert [(s.epoch, s.units, s.exposures, s.multiple_exposures) for s in control.strata] == [(1, 2, 4, 1)]
    assert [(s.epoch, s.units, s.exposures, s.multiple_exposures) for s in candidate.strata] == [(2, 1, 2, 0)]
    # u1's revenue (2 + 5) and requests (2) stay with the control of epoch 1; u2 has 0 and 2.
    assert control.stratum(1).metrics["revenue"] == Sample(2, 7.0, 49.0)
    assert control.stratum(1).metrics["latency_ms"] == Sample(2, 40.0, 800.0, 4.0, 8.0, 80.0)
    result = analyzer.analyze(data, now=3000.0)
    assert [(v["name"], v["multiple_exposures"]) for v in result.to_dict()["variants"]] == [
        ("control", 1),
        ("candidate", 0),
    ]

    # The policy may leave multiple-exposure units out: u1 disappears from the sums.
    excluding = dataclasses.replace(exp, analysis=dataclasses.replace(exp.analysis, multiple_exposures="exclude"))
    data = await reader.read(redis_client, excluding)
    s = data.control.stratum(1)
    assert (s.units, s.exposures, s.multiple_exposures) == (1, 2, 1)
    assert s.metrics["revenue"] == Sample(1, 0.0, 0.0)
    assert s.metrics["latency_ms"] == Sample(1, 20.0, 400.0, 2.0, 4.0, 40.0)


async def test_units_written_before_intent_to_treat_keep_their_old_accounting(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    """Old data has units[h] (latest) and h|e|v states, no h|f: it is moved per cell, as before."""
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    h = keys.unit_hash("old")
    await redis_client.hset(k.units, mapping={h: "1|control", f"{h}|1|control": "[1,0,10,0,0]"})
    await redis_client.set(k.metrics, '["errors","latency_ms","conversion","revenue"]')
    await redis_client.hset(
        k.agg,
        mapping={"1|control|units": 1, "1|control|exposures": 1, "1|control|exposures_sq": 1},
    )
    await redis_client.hset(k.epochs, "1", keys.encode_epoch({"control": 50, "candidate": 50}, since=1.0))
    log = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path)
    await log.start()
    log.record_exposure(exposure("old", "candidate", 2, 0))
    await log.close()
    strata = keys.decode_agg(await redis_client.hgetall(k.agg))
    assert strata[(1, "control")].units == 1
    assert strata[(2, "candidate")].units == 1  # old semantics: a unit per cell
    assert (1, "control" + keys.MULTIPLE_SUFFIX) not in strata
    assert await redis_client.hget(k.units, f"{h}|f") is None
