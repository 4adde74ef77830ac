"""Ratio metrics end to end: router event log -> flush.lua -> Redis -> reader -> delta method.

The per-unit data are random (fixed seed) and arrive over several batches, so a unit's
state moves more than once and flush.lua's incremental cross products are exercised.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio

from abrouter.analysis import analyzer, reader
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import keys
from abrouter.contract.experiment import Experiment, parse
from abrouter.router import outcomes
from abrouter.router.eventlog import events
from abrouter.router.eventlog.log import EventLog


def ratio_spec(name: str) -> Experiment:
    return parse(
        {
            "name": name,
            "unit": {"header": "X-User-Id"},
            "variants": [
                {"name": "control", "upstream": "http://a:1", "weight": 50},
                {"name": "candidate", "upstream": "http://b:1", "weight": 50},
            ],
            "metrics": [
                {"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "impressions"},
                {"name": "clicks", "kind": "continuous"},
                {"name": "impressions", "kind": "continuous"},
                {"name": "clicks_per_request", "kind": "ratio", "numerator": "clicks"},
            ],
        }
    )


async def test_ratio_sums_in_redis_equal_the_per_unit_sums(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    experiment = ratio_spec(experiment_name)
    rng = np.random.default_rng(9)
    units = [f"u{i}" for i in range(60)]
    totals = {u: [0, 0.0, 0.0] for u in units}  # requests, clicks, impressions
    log = EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)
    for round_ in range(3):  # three flushes: unit states move again and again
        for i, u in enumerate(units):
            variant = "control" if i % 2 == 0 else "candidate"
            h = keys.unit_hash(u)
            # Exposed first (outcomes credit exposed units), then 0-2 requests a round.
            for r in range(int(rng.integers(1 if round_ == 0 else 0, 3))):
                log.record_exposure(events.Exposure(f"{u}-{round_}-{r}", h, variant, 1, 1000.0, 200, 10.0, False))
                totals[u][0] += 1
            shown = float(rng.integers(0, 6))
            clicked = float(rng.binomial(int(shown), 0.3 if variant == "control" else 0.4))
            for metric, value in (("impressions", shown), ("clicks", clicked)):
                if value:
                    log.record_outcome(events.Outcome(h, variant, 1, metric, value, 1001.0))
            totals[u][1] += clicked
            totals[u][2] += shown
        await log.flush()
    await log.close()

    data = await reader.read(redis_client, experiment)
    for arm, parity in (("control", 0), ("candidate", 1)):
        exposed = [totals[u] for i, u in enumerate(units) if i % 2 == parity and totals[u][0] > 0]
        n_u, x_u, y_u = (np.array(col, dtype=float) for col in zip(*exposed))
        (ctr,) = data.samples(arm, "ctr")
        (per_request,) = data.samples(arm, "clicks_per_request")
        assert_close(ctr, Sample.from_ratio(x_u, y_u))
        assert_close(per_request, Sample.from_ratio(x_u, n_u))
        assert data.arm(arm).exposures == int(n_u.sum())

    result = analyzer.analyze(data, now=time.time())
    by_metric = {c.metric: c for c in result.comparisons}
    assert by_metric["ctr"].status == "ok" and by_metric["ctr"].n == len(exposed)
    assert result.to_dict()["variants"][0]["exposures"] == data.control.exposures


def test_the_delta_method_variance_matches_the_linearisation_over_units() -> None:
    """Var(R) = Var(x_u - R y_u) / (n ȳ²): the analyzer's SE against a direct computation."""
    rng = np.random.default_rng(3)
    arms = []
    for p in (0.10, 0.10):
        y = rng.poisson(rng.gamma(2.0, 4.0, 4000)) + 1.0
        x = rng.binomial(y.astype(int), np.clip(rng.normal(p, 0.04, y.size), 0, 1)).astype(float)
        arms.append((x, y))
    ses = []
    for x, y in arms:
        r = x.sum() / y.sum()
        ses.append(np.var(x - r * y, ddof=1) / (x.size * y.mean() ** 2))
    expected_se = float(np.sqrt(sum(ses)))
    from abrouter.analysis.stats.compare import compare

    c = compare(
        Sample.from_ratio(*arms[0]),
        Sample.from_ratio(*arms[1]),
        kind="continuous",
        direction="increase",
        alpha=0.05,
        expected_units=4000,
        variant="candidate",
        metric="ctr",
    )
    lo, hi = c.absolute_ci
    assert (hi - lo) / (2 * 1.959964) == pytest.approx(expected_se, rel=1e-3)


def test_a_client_cannot_report_a_ratio_directly() -> None:
    got = outcomes.validate_item(0, {"unit": "u1", "metric": "ctr", "value": 0.2}, ratio_spec("x"))
    assert isinstance(got, outcomes.ItemError)
    assert got.field == "metric" and "ratio of clicks and impressions" in got.error


def assert_close(got: Sample, want: Sample) -> None:
    for name in ("n", "sum", "sum_sq", "den_sum", "den_sum_sq", "sum_products"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-12), name


def test_a_summary_ratio_needs_its_denominator_sums() -> None:
    from abrouter.analysis import summary
    from abrouter.analysis.errors import InputError

    arm = {"n": 100, "sum": 30, "sum_squares": 50}
    doc = {
        "metrics": [
            {"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "impressions"},
            {"name": "clicks", "kind": "continuous"},
            {"name": "impressions", "kind": "continuous"},
        ],
        "variants": [
            {"name": n, "weight": 50, "units": 100, "metrics": {"ctr": arm, "clicks": arm, "impressions": arm}}
            for n in ("control", "candidate")
        ],
    }
    with pytest.raises(InputError, match=r"variants\[0\]\.metrics\.ctr\.denominator_sum: is required"):
        summary.parse(doc)
    ratio = arm | {"denominator_sum": 300, "denominator_sum_squares": 1200, "sum_products": 130}
    for v in doc["variants"]:
        v["metrics"]["ctr"] = ratio
    data, _ = summary.parse(doc)
    assert data.is_ratio("ctr") and not data.is_ratio("clicks")
