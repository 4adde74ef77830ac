"""Reading the router's aggregates from a real Redis through `abrouter.contract.keys`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from abrouter.analysis import analyzer, reader, report
from abrouter.analysis.errors import SourceError
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import keys
from abrouter.contract.experiment import Experiment, parse
from abrouter.router.eventlog import events
from abrouter.router.eventlog.log import EventLog
from abrouter.router.redis_server import free_port


def spec(name: str, *, epoch: int = 2, weights: tuple[float, float] = (50, 50)) -> Experiment:
    return parse(
        {
            "name": name,
            "unit": {"header": "X-User-Id"},
            "epoch": epoch,
            "variants": [
                {"name": "control", "upstream": "http://a:1", "weight": weights[0]},
                {"name": "candidate", "upstream": "http://b:1", "weight": weights[1]},
            ],
            "metrics": [{"name": "conversion", "kind": "binary"}, {"name": "revenue", "kind": "continuous"}],
        }
    )


def field(epoch: int, variant: str, *parts: str) -> str:
    return keys.FIELD_SEP.join([str(epoch), variant, *parts])


async def test_agg_fields_become_unit_level_and_ratio_samples(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    k = keys.Keys(experiment_name)
    await redis_client.hset(
        k.agg,
        mapping={
            field(1, "control", "units"): 100,
            field(1, "control", "exposures"): 250,
            field(1, "control", "exposures_sq"): 900,
            field(1, "control", "conversion", "sum"): 12,
            field(1, "control", "conversion", "sum_sq"): 12,
            field(1, "control", "revenue", "sum"): 340.5,
            field(1, "control", "revenue", "sum_sq"): 4100.25,
            field(1, "control", "errors", "sum"): 3,
            field(1, "control", "errors", "sum_sq"): 5,
            field(1, "control", "errors", "sum_xn"): 11,
            field(1, "control", "latency_ms", "sum"): 5000,
            field(1, "control", "latency_ms", "sum_sq"): 160000,
            field(1, "control", "latency_ms", "sum_xn"): 18000,
            field(2, "candidate", "units"): 40,
            field(2, "candidate", "exposures"): 41,
            field(2, "candidate", "exposures_sq"): 43,
        },
    )
    await redis_client.hset(
        k.epochs,
        mapping={
            "1": keys.encode_epoch({"control": 90, "candidate": 10}, since=1000.0),
            "2": keys.encode_epoch({"control": 50, "candidate": 50}, since=2000.0),
        },
    )
    data = await reader.read(redis_client, spec(experiment_name))

    assert data.epoch_ids == (1, 2)
    assert data.started_at == 1000.0
    assert data.epochs[0].weights == {"control": 90.0, "candidate": 10.0}
    assert data.weights == {"control": 50.0, "candidate": 50.0}
    assert [m.name for m in data.metrics] == ["conversion", "revenue", "errors", "latency_ms"]
    assert data.control.units == 100 and data.arm("candidate").units == 40
    assert data.samples("control", "conversion") == (Sample(100, 12, 12), Sample(0, 0, 0))
    assert data.samples("control", "revenue")[0] == Sample(100, 340.5, 4100.25)
    assert data.samples("control", "errors")[0] == Sample(100, 3, 5, den_sum=250, den_sum_sq=900, sum_products=11)
    assert data.samples("control", "latency_ms")[0] == Sample(100, 5000, 160000, 250, 900, 18000)
    # A stratum without outcomes still has its units: x_u = 0 for each of them.
    assert data.samples("candidate", "revenue")[1] == Sample(40, 0.0, 0.0)
    assert data.samples("candidate", "latency_ms")[1] == Sample(40, 0.0, 0.0, 41, 43, 0.0)


async def test_binary_metrics_use_sum_as_sum_of_squares(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    k = keys.Keys(experiment_name)
    await redis_client.hset(
        k.agg, mapping={field(2, "control", "units"): 10, field(2, "control", "conversion", "sum"): 4}
    )
    data = await reader.read(redis_client, spec(experiment_name))
    assert data.samples("control", "conversion") == (Sample(10, 4, 4),)


async def test_an_empty_experiment_reads_as_the_specs_current_epoch(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    data = await reader.read(redis_client, spec(experiment_name, epoch=3, weights=(95, 5)))
    assert data.epoch_ids == (3,)
    assert data.epochs[0].weights == {"control": 95.0, "candidate": 5.0}
    assert data.started_at is None
    result = analyzer.analyze(data, now=time.time())  # degenerate data is a result, not an exception
    assert {c.status for c in result.comparisons} == {"insufficient_data"}
    assert result.decision.action == "continue"


async def test_what_the_router_logs_is_what_the_analyzer_reads(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    experiment = spec(experiment_name, epoch=1)
    log = EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1234.0)
    # Unit u1: two requests (one error), converts twice (binary: counts once), revenue 3 + 4.
    for i, (unit, variant, latency, error) in enumerate(
        [
            ("u1", "control", 10.0, False),
            ("u1", "control", 30.0, True),
            ("u2", "control", 20.0, False),
            ("u3", "candidate", 5.0, False),
        ]
    ):
        log.record_exposure(
            events.Exposure(
                request_id=f"r{i}",
                unit_hash=keys.unit_hash(unit),
                variant=variant,
                epoch=1,
                ts=1234.0 + i,
                status=500 if error else 200,
                latency_ms=latency,
                error=error,
            )
        )
    for unit, variant, metric, value in [
        ("u1", "control", "conversion", 1),
        ("u1", "control", "conversion", 1),
        ("u1", "control", "revenue", 3.0),
        ("u1", "control", "revenue", 4.0),
        ("u3", "candidate", "revenue", 2.5),
    ]:
        log.record_outcome(
            events.Outcome(
                unit_hash=keys.unit_hash(unit), variant=variant, epoch=1, metric=metric, value=value, ts=1300.0
            )
        )
    await log.close()

    data = await reader.read(redis_client, experiment)
    assert data.started_at == 1234.0
    assert data.samples("control", "conversion") == (Sample(2, 1, 1),)
    assert data.samples("control", "revenue") == (Sample(2, 7.0, 49.0),)
    # n_u = (2, 1); errors x_u = (1, 0); latency x_u = (40, 20).
    assert data.samples("control", "errors") == (Sample(2, 1, 1, den_sum=3, den_sum_sq=5, sum_products=2),)
    assert data.samples("control", "latency_ms") == (Sample(2, 60, 2000, 3, 5, 100),)
    assert data.samples("candidate", "revenue") == (Sample(1, 2.5, 6.25),)


async def test_unreachable_redis_is_a_source_error() -> None:
    client = redis.asyncio.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(SourceError, match="cannot read experiment 'x' from Redis"):
            await reader.read(client, spec("x"))
    finally:
        await client.aclose()


def test_build_keeps_epochs_without_registered_weights() -> None:
    strata = keys.decode_agg({"4|control|units": "3", "5|candidate|units": "2"})
    epochs = keys.decode_epochs({"5": keys.encode_epoch({"control": 1, "candidate": 3}, since=9.0)})
    data = reader.build(spec("x", epoch=5), strata, epochs)
    assert data.epoch_ids == (4, 5)
    assert data.epochs[0].weights == {}  # unknown split: the SRM check skips the epoch
    assert data.epochs[1].weights == {"control": 25.0, "candidate": 75.0}
    assert analyzer.srm(data).observed == {"control": 0.0, "candidate": 2.0}


async def test_impossible_binary_sums_are_reported_and_clamped_not_raised(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Before: "binary metric: need 0 <= sum <= n" escaped and `abrouter analyze` died."""
    k = keys.Keys(experiment_name)
    for variant in ("control", "candidate"):
        await redis_client.hset(
            k.agg,
            mapping={
                field(2, variant, "units"): 2,
                field(2, variant, "exposures"): 2,
                field(2, variant, "conversion", "sum"): 3 if variant == "control" else 1,
            },
        )
    data = await reader.read(redis_client, spec(experiment_name))
    assert data.inconsistent == ("epoch 2 control: conversion sum 3 is outside [0, units=2]",)
    assert data.control.strata[0].metrics["conversion"].sum == 2
    result = analyzer.analyze(data, now=time.time())
    assert result.to_dict()["data_inconsistent"] == list(data.inconsistent)
    assert "DATA INCONSISTENT" in report.render(result)
