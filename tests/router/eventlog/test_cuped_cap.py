"""CUPED covariates and per-unit caps through the event log, flush.lua and a real Redis.

The covariate arrives before, with or after a unit's outcomes, over several batches, and
some units report a second, different value; Redis must hold the sums of the *first*
value per unit (c_u = 0 for a unit that never reports one), and Σx·c right either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis.asyncio

from abrouter.analysis import reader
from abrouter.contract import keys
from abrouter.contract.experiment import Experiment, parse
from abrouter.router.eventlog import events
from abrouter.router.eventlog.log import EventLog

ARMS = ("control", "candidate")


def spec(name: str, **changes: object) -> Experiment:
    return parse(
        {
            "name": name,
            "unit": {"header": "X-User-Id"},
            "variants": [
                {"name": "control", "upstream": "http://a:1", "weight": 50},
                {"name": "candidate", "upstream": "http://b:1", "weight": 50},
            ],
            "metrics": [
                {"name": "conversion", "kind": "binary"},
                {"name": "revenue", "kind": "continuous", "cap": 100},
                {"name": "clicks", "kind": "continuous", "cuped": False},
            ],
            "covariate": "prior_clicks",
            **changes,
        }
    )


async def test_covariate_sums_count_each_units_first_value_whenever_it_arrives(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    metrics = [{"name": "conversion", "kind": "binary"}, {"name": "revenue", "kind": "continuous"}]
    experiment = spec(experiment_name, metrics=metrics)
    rng = np.random.default_rng(4)
    units = [f"u{i}" for i in range(80)]
    arm = {u: ARMS[i % 2] for i, u in enumerate(units)}
    # When the covariate comes: 0 before the outcomes, 1 with them, 2 after them (a later
    # batch), 3 never. Units 0 mod 5 also send a second, different value later: ignored.
    when = {u: int(rng.integers(0, 4)) for u in units}
    first = {u: float(rng.integers(0, 5)) if i % 7 else 0.0 for i, u in enumerate(units)}  # some true zeros
    x = {u: 0.0 for u in units}
    conv = {u: 0.0 for u in units}
    log = EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)

    def outcome(u: str, metric: str, value: float) -> None:
        log.record_outcome(events.Outcome(keys.unit_hash(u), arm[u], 1, metric, value, 1001.0))

    for u in units:
        log.record_exposure(events.Exposure(f"{u}-0", keys.unit_hash(u), arm[u], 1, 1000.0, 200, 5.0, False))
    await log.flush()
    for round_ in range(3):
        for i, u in enumerate(units):
            if when[u] == round_:  # rounds 0 and 1: before / with this round's outcomes
                outcome(u, "prior_clicks", first[u])
            if round_ < 2:
                value = float(rng.gamma(2.0, 3.0))
                outcome(u, "revenue", value)
                x[u] += value
                if rng.random() < 0.3:
                    outcome(u, "conversion", 1.0)
                    conv[u] = 1.0
            if round_ == 2 and i % 5 == 0 and when[u] < 3:
                outcome(u, "prior_clicks", first[u] + 10.0)  # a second value: the first stays
        await log.flush()
    await log.close()

    data = await reader.read(redis_client, experiment)
    for name in ARMS:
        mine = [u for u in units if arm[u] == name]
        c = np.array([first[u] if when[u] < 3 else 0.0 for u in mine])
        (revenue,) = data.samples(name, "revenue")
        (conversion,) = data.samples(name, "conversion")
        assert revenue.n == len(mine)
        for sample, values in ((revenue, [x[u] for u in mine]), (conversion, [conv[u] for u in mine])):
            v = np.array(values)
            assert sample.cov_sum == pytest.approx(c.sum(), rel=1e-12)
            assert sample.cov_sum_sq == pytest.approx((c**2).sum(), rel=1e-12)
            assert sample.cov_products == pytest.approx((v * c).sum(), rel=1e-12)
        raw = await redis_client.hgetall(keys.Keys(experiment_name).agg)
        strata = keys.decode_agg(raw)
        reported = sum(1 for u in mine if when[u] < 3)
        assert strata[(1, name)].metrics["prior_clicks~set"].sum == reported


async def test_a_heavy_units_contribution_is_exactly_the_cap(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    experiment = spec(experiment_name)
    log = EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)
    heavy, light = keys.unit_hash("heavy"), keys.unit_hash("light")
    for i, h in enumerate((heavy, light)):
        log.record_exposure(events.Exposure(f"r{i}", h, "control", 1, 1000.0, 200, 5.0, False))
    # 80 + 90 in one batch, 50 and 30 more in later ones: the heavy unit's total is capped
    # at 100 every time; the light one (40) is under the cap. clicks has no cap.
    for batch in ((80.0, 90.0), (50.0,), (30.0,)):
        for value in batch:
            log.record_outcome(events.Outcome(heavy, "control", 1, "revenue", value, 1001.0))
            log.record_outcome(events.Outcome(heavy, "control", 1, "clicks", value, 1001.0))
        if batch == (50.0,):
            log.record_outcome(events.Outcome(light, "control", 1, "revenue", 40.0, 1001.0))
        await log.flush()
    await log.close()
    strata = keys.decode_agg(await redis_client.hgetall(keys.Keys(experiment_name).agg))
    revenue, clicks = strata[(1, "control")].metrics["revenue"], strata[(1, "control")].metrics["clicks"]
    assert revenue.sum == 100.0 + 40.0
    assert revenue.sum_sq == 100.0**2 + 40.0**2
    assert revenue.sum_xn == 100.0 * 1 + 40.0 * 1  # one request each
    assert clicks.sum == 250.0 and clicks.sum_sq == 250.0**2


async def test_a_metric_added_by_a_reload_after_the_covariate_keeps_every_column(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    # The covariate's columns come last in `keys.metric_order`, so a metric added later
    # lands before them: the event log maps columns by name, not by position.
    before = spec(experiment_name, metrics=[{"name": "revenue", "kind": "continuous"}])
    after = spec(
        experiment_name, metrics=[{"name": "revenue", "kind": "continuous"}, {"name": "orders", "kind": "continuous"}]
    )
    log = EventLog(redis_url=redis_url, experiment=before, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)
    h = keys.unit_hash("u1")
    log.record_exposure(events.Exposure("r1", h, "control", 1, 1000.0, 200, 5.0, False))
    log.record_outcome(events.Outcome(h, "control", 1, "prior_clicks", 4.0, 1001.0))
    log.record_outcome(events.Outcome(h, "control", 1, "revenue", 2.0, 1001.0))
    await log.flush()
    log.update_experiment(after)
    log.record_outcome(events.Outcome(h, "control", 1, "orders", 1.0, 1002.0))
    log.record_outcome(events.Outcome(h, "control", 1, "revenue", 3.0, 1002.0))
    await log.flush()
    await log.close()
    data = await reader.read(redis_client, after)
    (revenue,) = data.samples("control", "revenue")
    (orders,) = data.samples("control", "orders")
    assert (revenue.sum, revenue.cov_sum, revenue.cov_products) == (5.0, 4.0, 20.0)
    assert (orders.sum, orders.cov_sum, orders.cov_products) == (1.0, 4.0, 4.0)


async def test_a_covariate_declared_later_adds_to_data_written_before_the_move(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    # The pinned data of tests/contract/test_keys.py: unit states of 5 columns, no
    # covariate. A spec that now declares one extends them by name; old sums stay.
    from tests.contract.test_keys import PINNED, restore

    await restore(redis_client, experiment_name)
    experiment = parse({**PINNED["spec"], "name": experiment_name, "covariate": "prior_clicks"})
    agg = keys.Keys(experiment_name).agg
    before = keys.decode_agg(await redis_client.hgetall(agg))[(1, "candidate")]
    log = EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path)
    await log.start()
    # u0's state in (1, candidate) is [2 requests, 1 error, 54 ms, conversion 1, revenue 0]:
    # a legacy per-cell state; its covariate and a new revenue outcome move it.
    log.record_outcome(events.Outcome("u0", "candidate", 1, "prior_clicks", 7.0, 1.0))
    log.record_outcome(events.Outcome("u0", "candidate", 1, "revenue", 3.0, 1.0))
    await log.close()
    assert log.stats.quarantined == 0 and log.stats.dropped == 0
    after = keys.decode_agg(await redis_client.hgetall(agg))[(1, "candidate")]
    assert after.units == before.units
    assert after.metrics["prior_clicks"].sum == 7.0 and after.metrics["prior_clicks"].sum_sq == 49.0
    assert after.metrics["conversion"].sum_xy == {"prior_clicks": 7.0}  # x_u = 1
    assert after.metrics["revenue"].sum_xy == {"prior_clicks": 21.0}  # x_u = 0 + 3
    assert after.metrics["revenue"].sum == before.metrics["revenue"].sum + 3.0


async def test_a_first_covariate_of_zero_is_kept_too(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    # The flag column, not the value, says a unit has its covariate: 0 is a value.
    experiment = spec(experiment_name)
    log = EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)
    across, within = keys.unit_hash("across"), keys.unit_hash("within")
    for i, h in enumerate((across, within)):
        log.record_exposure(events.Exposure(f"r{i}", h, "control", 1, 1000.0, 200, 5.0, False))
    log.record_outcome(events.Outcome(across, "control", 1, "prior_clicks", 0.0, 1001.0))
    log.record_outcome(events.Outcome(within, "control", 1, "prior_clicks", 0.0, 1001.0))
    log.record_outcome(events.Outcome(within, "control", 1, "prior_clicks", 5.0, 1001.0))  # same batch
    await log.flush()
    log.record_outcome(events.Outcome(across, "control", 1, "prior_clicks", 5.0, 1002.0))  # a later batch
    await log.close()
    strata = keys.decode_agg(await redis_client.hgetall(keys.Keys(experiment_name).agg))
    control = strata[(1, "control")].metrics
    assert control["prior_clicks"].sum == 0.0 and control["prior_clicks~set"].sum == 2


async def test_a_cuped_ratio_reads_its_parts_products_with_the_covariate(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    # [cuped] ctr = clicks / impressions with cuped: true: the reader attaches Σc, Σc², Σx·c
    # (clicks) and Σy·c (impressions) from what flush.lua keeps for the parts, and compare()
    # on the data read from Redis is compare() on the raw units' sums.
    from abrouter.analysis.stats.compare import compare
    from abrouter.analysis.stats.sample import Sample

    metrics = [
        {"name": "clicks", "kind": "continuous"},
        {"name": "impressions", "kind": "continuous"},
        {"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "impressions", "cuped": True},
    ]
    experiment = spec(experiment_name, metrics=metrics)
    rng = np.random.default_rng(9)
    units = [f"u{i}" for i in range(120)]
    arm = {u: ARMS[i % 2] for i, u in enumerate(units)}
    c = {u: float(rng.poisson(4)) for u in units}
    y = {u: float(rng.integers(1, 9)) for u in units}
    x = {u: float(rng.binomial(int(y[u]), 0.2 + 0.05 * min(c[u], 6))) for u in units}
    log = EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)
    for u in units:
        h = keys.unit_hash(u)
        log.record_exposure(events.Exposure(f"{u}-0", h, arm[u], 1, 1000.0, 200, 5.0, False))
        for metric, value in (("impressions", y[u]), ("clicks", x[u]), ("prior_clicks", c[u])):
            log.record_outcome(events.Outcome(h, arm[u], 1, metric, value, 1001.0))
    await log.close()
    data = await reader.read(redis_client, experiment)
    raw = {}
    for name in ARMS:
        mine = [u for u in units if arm[u] == name]
        raw[name] = Sample.from_ratio([x[u] for u in mine], [y[u] for u in mine], [c[u] for u in mine])
        (ctr,) = data.samples(name, "ctr")
        assert ctr.to_dict() == pytest.approx(raw[name].to_dict(), rel=1e-12)
    kw = dict(kind="continuous", direction="increase", alpha=0.05, expected_units=60, variant="candidate", metric="ctr")
    read = compare(data.samples("control", "ctr"), data.samples("candidate", "ctr"), **kw)  # type: ignore[arg-type]
    direct = compare(raw["control"], raw["candidate"], **kw)  # type: ignore[arg-type]
    assert read.cuped and read.absolute_ci == pytest.approx(direct.absolute_ci, rel=1e-9)
    assert read.variance_reduction > 0.1


async def test_cuped_ratios_over_the_exposures_and_of_built_ins_read_their_products_with_the_covariate(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    # [cuped] Per request (denominator: exposures) the reader takes Σn·c from the covariate
    # column's sum_xn; of a built-in (errors, latency_ms) from the (built-in, covariate) pair
    # that flush.lua keeps as any other, with no change of its own. Units make 1 to 4
    # requests over three batches, report clicks and the covariate before, between or after
    # them (or never), some a second value; anonymous requests are units with c = 0; a few
    # units are also exposed to the other arm (kept in their first, or excluded).
    from abrouter.analysis.stats.compare import compare
    from abrouter.analysis.stats.sample import Sample
    from tests.analysis.stats.test_stats_cuped_per_request import reference

    metrics = [
        {"name": "clicks", "kind": "continuous"},
        {"name": "per_request", "kind": "ratio", "numerator": "clicks", "cuped": True},
        {"name": "error_rate", "kind": "ratio", "numerator": "errors", "cuped": True},
        {"name": "latency", "kind": "ratio", "numerator": "latency_ms", "cuped": True},
        {"name": "ms_per_click", "kind": "ratio", "numerator": "latency_ms", "denominator": "clicks", "cuped": True},
    ]
    experiment = spec(experiment_name, metrics=metrics)
    rng = np.random.default_rng(18)
    units = [f"u{i}" for i in range(160)]
    arm = {u: ARMS[i % 2] for i, u in enumerate(units)}
    candidates, moved = set(units[:8]), set()  # some of these are also exposed to the other arm once
    c = {u: float(rng.poisson(5)) if i % 9 else 0.0 for i, u in enumerate(units)}
    when = {u: int(rng.integers(0, 4)) for u in units}  # covariate in round 0, 1, 2, or never
    totals = {u: {"n": 0.0, "clicks": 0.0, "errors": 0.0, "latency_ms": 0.0} for u in units}
    log = EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)
    for round_ in range(3):
        for i, u in enumerate(units):
            h, t = keys.unit_hash(u), totals[u]
            if when[u] == round_:
                log.record_outcome(events.Outcome(h, arm[u], 1, "prior_clicks", c[u], 999.0 + round_))
            for k in range(int(rng.integers(0, 3)) if round_ or not i % 3 else int(rng.integers(1, 3))):
                latency, error = float(rng.gamma(2.0, 5.0 + c[u])), bool(rng.random() < 0.05 + 0.02 * c[u])
                served = arm[u]
                if u in candidates and round_ == 2 and k == 0 and t["n"]:  # after its first exposure
                    served = ARMS[1 - ARMS.index(arm[u])]
                    moved.add(u)
                log.record_exposure(events.Exposure(f"{u}-{round_}-{k}", h, served, 1, 1000.0, 200, latency, error))
                t["n"], t["latency_ms"], t["errors"] = t["n"] + 1, t["latency_ms"] + latency, t["errors"] + error
            if t["n"] and rng.random() < 0.5:
                value = float(rng.binomial(2, min(0.1 + 0.03 * c[u], 1.0)))
                log.record_outcome(events.Outcome(h, arm[u], 1, "clicks", value, 1001.0))
                t["clicks"] += value
            if round_ == 2 and i % 5 == 0 and when[u] < 3:
                log.record_outcome(events.Outcome(h, arm[u], 1, "prior_clicks", c[u] + 10.0, 1005.0))  # ignored
        for j in range(5):  # anonymous requests: each its own unit, n = 1, no covariate
            anon = keys.unit_hash(f"anon-{round_}-{j}")
            log.record_exposure(events.Exposure(f"a-{round_}-{j}", anon, ARMS[j % 2], 1, 1000.0, 500, 7.0, True, True))
        await log.flush()
    await log.close()

    def units_of(name: str, excluded: set[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        mine = [u for u in units if arm[u] == name and totals[u]["n"] and u not in excluded]
        anonymous = 9 if name == "control" else 6  # j = 0, 2, 4 of each round's five are the control's
        n = np.r_[[totals[u]["n"] for u in mine], np.ones(anonymous)]
        cov = np.r_[[c[u] if when[u] < 3 else 0.0 for u in mine], np.zeros(anonymous)]
        part = {m: np.r_[[totals[u][m] for u in mine], np.zeros(anonymous)] for m in ("clicks", "latency_ms")}
        part["errors"] = np.r_[[totals[u]["errors"] for u in mine], np.ones(anonymous)]
        part["latency_ms"][len(mine) :] = 7.0
        return {
            "per_request": (part["clicks"], n, cov),
            "error_rate": (part["errors"], n, cov),
            "latency": (part["latency_ms"], n, cov),
            "ms_per_click": (part["latency_ms"], part["clicks"], cov),
        }

    kw = dict(kind="continuous", direction="increase", alpha=0.05, expected_units=80, variant="candidate")
    assert moved
    for policy, excluded in (("keep", set()), ("exclude", moved)):
        read = spec(experiment_name, metrics=metrics, analysis={"multiple_exposures": policy})
        data = await reader.read(redis_client, read)
        raw = {name: units_of(name, excluded) for name in ARMS}
        for metric in ("per_request", "error_rate", "latency", "ms_per_click"):
            for name in ARMS:
                (got,) = data.samples(name, metric)
                assert got.to_dict() == pytest.approx(Sample.from_ratio(*raw[name][metric]).to_dict(), rel=1e-12)
            control, candidate = data.samples("control", metric), data.samples("candidate", metric)
            r = compare(control, candidate, metric=metric, **kw)  # type: ignore[arg-type]
            difference, _, _ = reference(raw["control"][metric], raw["candidate"][metric])
            assert r.cuped and r.absolute_lift == pytest.approx(difference, rel=1e-9), (policy, metric)
