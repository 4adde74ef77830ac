"""[regression] Several covariates through the event log, flush.lua and a real Redis.

Each covariate is set once per unit by its *earliest report*, whichever batch (router)
brings it, and independently of the others; Redis must hold, per stratum, every sum the
k-covariate regression needs (Σc_i, Σc_i², Σx·c_i, Σc_i·c_j), which the reader turns
into `MultiSums` equal to numpy's sums of the per-unit values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis.asyncio

from abrouter.analysis import reader
from abrouter.analysis.stats.multisums import MultiSums
from abrouter.contract import keys
from abrouter.router.eventlog import events
from abrouter.router.eventlog.log import EventLog
from tests.router.eventlog.test_cuped_cap import ARMS, spec

COVARIATES = ("prior_clicks", "tenure", "prior_spend")


async def test_each_covariate_keeps_its_earliest_report_across_routers_and_the_sums_are_numpys(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    experiment = spec(experiment_name, covariate=None, covariates=list(COVARIATES))
    rng = np.random.default_rng(18)
    units = [f"u{i}" for i in range(90)]
    arm = {u: ARMS[i % 2] for i, u in enumerate(units)}
    # Two routers (producers): `a` flushes first, `b` later. Per unit and covariate, up to
    # two reports at random times, each from a random router; the earliest report's value
    # must stay, and a covariate never reported is 0.
    logs = [EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path / n) for n in "ab"]
    for log in logs:
        await log.start()
    logs[0].register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)
    for u in units:
        logs[0].record_exposure(events.Exposure(f"{u}-0", keys.unit_hash(u), arm[u], 1, 1000.0, 200, 5.0, False))
    await logs[0].flush()
    want = {u: [0.0] * len(COVARIATES) for u in units}
    revenue = {u: 0.0 for u in units}
    conversion = {u: 0.0 for u in units}
    for u in units:
        for k, name in enumerate(COVARIATES):
            reports = [(float(rng.uniform(1001, 1100)), float(rng.integers(0, 20)), int(rng.integers(0, 2)))
                       for _ in range(int(rng.integers(0, 3)))]  # fmt: skip
            for ts, value, router in reports:
                logs[router].record_outcome(events.Outcome(keys.unit_hash(u), arm[u], 1, name, value, ts))
            if reports:
                want[u][k] = min(reports)[1]
        revenue[u] = float(rng.gamma(2.0, 3.0)) + 0.5 * want[u][0]
        logs[1].record_outcome(events.Outcome(keys.unit_hash(u), arm[u], 1, "revenue", revenue[u], 1050.0))
        if rng.random() < 0.4:
            conversion[u] = 1.0
            logs[0].record_outcome(events.Outcome(keys.unit_hash(u), arm[u], 1, "conversion", 1.0, 1050.0))
    await logs[0].flush()
    await logs[1].flush()
    for log in logs:
        await log.close()

    data = await reader.read(redis_client, experiment)
    for name in ARMS:
        mine = [u for u in units if arm[u] == name]
        c = np.array([want[u] for u in mine])
        for metric, x in (("revenue", revenue), ("conversion", conversion)):
            (sample,) = data.samples(name, metric)
            expected = MultiSums.from_units([x[u] for u in mine], c)
            got = sample.covariates
            assert got is not None and sample.cov_sum is None, metric  # k covariates, not CUPED's one
            assert (got.n, got.sum, got.sum_sq) == pytest.approx((expected.n, expected.sum, expected.sum_sq), rel=1e-12)
            assert got.cov_sum == pytest.approx(expected.cov_sum, rel=1e-12)
            assert got.cov_products == pytest.approx(expected.cov_products, rel=1e-12)
            assert np.allclose(got.cov_cross, expected.cov_cross, rtol=1e-12, atol=0), metric
        (clicks,) = data.samples(name, "clicks")  # cuped: false
        assert clicks.covariates is None and clicks.cov_sum is None


def test_the_pairs_the_router_keeps_for_several_covariates() -> None:
    e = spec("x", covariate=None, covariates=["a", "b", "c"])
    assert keys.covariate_columns(e) == ("a", "a~set", "b", "b~set", "c", "c~set")
    assert keys.covariate_pairs(e) == (
        ("conversion", "a"), ("revenue", "a"),  # as with one covariate
        ("conversion", "b"), ("revenue", "b"), ("conversion", "c"), ("revenue", "c"),  # Σx·c_i
        ("a", "b"), ("a", "c"), ("b", "c"),  # Σc_i·c_j, i < j
    )  # fmt: skip
    one = spec("x")
    assert keys.covariate_pairs(one) == (("conversion", "prior_clicks"), ("revenue", "prior_clicks"))


async def test_a_reload_from_one_covariate_to_two_extends_the_units_it_moves(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    metrics = [{"name": "revenue", "kind": "continuous"}]
    before = spec(experiment_name, metrics=metrics)  # covariate: prior_clicks
    after = spec(experiment_name, metrics=metrics, covariate=None, covariates=["prior_clicks", "tenure"])
    log = EventLog(redis_url=redis_url, experiment=before, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)
    h = keys.unit_hash("u1")
    log.record_exposure(events.Exposure("r1", h, "control", 1, 1000.0, 200, 5.0, False))
    log.record_outcome(events.Outcome(h, "control", 1, "prior_clicks", 4.0, 1001.0))
    log.record_outcome(events.Outcome(h, "control", 1, "revenue", 2.0, 1001.0))
    await log.flush()
    log.update_experiment(after)
    log.record_outcome(events.Outcome(h, "control", 1, "tenure", 3.0, 1002.0))
    log.record_outcome(events.Outcome(h, "control", 1, "prior_clicks", 9.0, 1003.0))  # later: ignored
    log.record_outcome(events.Outcome(h, "control", 1, "revenue", 3.0, 1002.0))
    await log.flush()
    await log.close()
    assert log.stats.quarantined == 0
    (revenue,) = (await reader.read(redis_client, after)).samples("control", "revenue")
    assert revenue.covariates == MultiSums.from_units([5.0], [[4.0, 3.0]])
