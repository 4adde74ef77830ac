"""CUPED covariates and caps over the real router HTTP API, a real Redis and the analyzer."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import redis.asyncio
from aiohttp import web
from scipy import stats as sps

from abrouter.analysis import analyzer, html_report, reader, report
from abrouter.analysis.stats import cuped
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import experiment as model
from tests.router.conftest import MakeRouter
from tests.router.http.test_api import expose, outcomes

ARMS = ("control", "candidate")


async def test_covariate_items_are_checked_and_a_bad_one_names_its_field(make_router: MakeRouter) -> None:
    r = await make_router(covariate="prior_clicks")
    rid, _ = await expose(r, "u1")
    status, body = await outcomes(
        r,
        '[{"unit": "u1", "covariate": 3},'  # fine
        ' {"unit": "u1", "covariate": "3"},'  # not a number
        ' {"unit": "u1", "covariate": 1e999},'  # infinite
        ' {"unit": "u1", "covariate": 1e16},'  # beyond keys.MAX_ABS_VALUE
        ' {"unit": "u1", "covariate": 1, "metric": "revenue"},'  # not an outcome too
        ' {"request_id": "' + rid + '", "covariate": 1, "event_id": "e1"},'  # set once anyway: no id
        ' {"unit": "never-seen", "covariate": 1}]',
    )
    assert status == 422 and body["code"] == "invalid_outcomes"
    assert [(i["index"], i["field"]) for i in body["items"]] == [
        (1, "covariate"),
        (2, "covariate"),
        (3, "covariate"),
        (4, "metric"),
        (5, "event_id"),
        (6, "unit"),
    ]
    assert "finite" in body["items"][1]["error"] and "1e+15" in body["items"][2]["error"]
    plain = await make_router()  # no covariate declared
    status, body = await outcomes(plain, {"unit": "u1", "covariate": 3})
    assert status == 422 and body["items"][0]["field"] == "covariate"
    assert "declares no covariate" in body["items"][0]["error"]


async def test_covariates_over_http_reduce_the_variance_the_analysis_reports(
    make_router: MakeRouter, redis_client: redis.asyncio.Redis
) -> None:
    metrics = [{"name": "revenue", "kind": "continuous", "cap": 60}, {"name": "conversion", "kind": "binary"}]
    r = await make_router(covariate="prior_clicks", metrics=metrics)
    rng = np.random.default_rng(12)
    users = [f"user-{i}" for i in range(300)]
    prior = {u: float(rng.poisson(5)) for u in users}
    variants, revenue = {}, {}
    for u in users:
        _, variants[u] = await expose(r, u)
        revenue[u] = float(2 * prior[u] + rng.normal(0, 2))
    # Half report the covariate before their outcomes, half after (a later flush).
    early, late = users[::2], users[1::2]
    assert (await outcomes(r, [{"unit": u, "covariate": prior[u]} for u in early]))[0] == 202
    body = [{"unit": u, "metric": "revenue", "value": revenue[u]} for u in users]
    assert (await outcomes(r, body))[0] == 202
    await r.settle()
    assert (await outcomes(r, [{"unit": u, "covariate": prior[u]} for u in late]))[0] == 202
    # A heavy user: the cap keeps its total at 60.
    assert (await outcomes(r, [{"unit": users[0], "metric": "revenue", "value": 1000}]))[0] == 202
    revenue[users[0]] = min(revenue[users[0]] + 1000, 60.0)
    # A second covariate for a unit is ignored.
    assert (await outcomes(r, [{"unit": users[1], "covariate": 1000}]))[0] == 202
    await r.settle()

    experiment = model.load(r.path)
    data = await reader.read(redis_client, experiment)
    raw = []
    for arm in ("control", "candidate"):
        mine = [u for u in users if variants[u] == arm]
        x = np.array([min(revenue[u], 60.0) for u in mine])
        c = np.array([prior[u] for u in mine])
        (s,) = data.samples(arm, "revenue")
        assert s.n == len(mine) and abs(s.sum - x.sum()) < 1e-9
        assert abs(s.cov_sum - c.sum()) < 1e-9 and abs(s.cov_products - (x * c).sum()) < 1e-6
        raw.append(cuped.Sums.from_units(x, c))
    direct = cuped.adjusted_difference(*raw)
    result = analyzer.analyze(data, now=2e9)
    (c,) = [c for c in result.comparisons if c.metric == "revenue"]
    assert c.cuped and c.variance_reduction == pytest.approx(float(direct.variance_reduction), rel=1e-9)
    assert c.absolute_lift == pytest.approx(float(direct.difference), rel=1e-9)
    assert c.variance_reduction > 0.4  # revenue ≈ 2·prior + noise
    as_json = result.to_dict()["comparisons"]
    assert [x["variance_reduction"] is not None for x in as_json if x["metric"] == "revenue"] == [True]
    (errors,) = [c for c in result.comparisons if c.metric == "errors"]
    assert not errors.cuped  # built-ins are never adjusted
    # What `abrouter analyze` prints: the reduction in the note column, and a legend.
    text = report.render(result)
    assert f"CUPED var {-100 * c.variance_reduction:+.1f}%" in text and "CUPED: adjusted by" in text
    # And what `abrouter report` shows under its arms table.
    page = html_report.render(experiment, result, [])
    assert f"revenue for candidate {-c.variance_reduction:+.1%}" in page and "<b>prior_clicks</b>" in page
    # The arms table shows the p a promotion is decided on (this look's, Holm-adjusted).
    holm = result.holm["candidate"]
    assert 0 < holm <= 1 and f"<td>{holm:,.4g}</td>" in page and "p to promote (this look, Holm)" in page


async def test_a_cuped_ratio_per_request_and_of_errors_over_http_is_the_numpy_reference(
    make_router: MakeRouter, redis_client: redis.asyncio.Redis, aiohttp_server: Any
) -> None:
    # [cuped] clicks per request (denominator: exposures, counted by the router from proxied
    # requests) and errors per request (the built-in, a 500 of the upstream), adjusted by the
    # users' pre-period clicks: the analyzer's estimate, SE and variance reduction are those of
    # the ratio CUPED reference computed from the raw users with numpy.
    from tests.analysis.stats.test_stats_cuped_per_request import reference

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": request.path != "/fail"}, status=500 if request.path == "/fail" else 200)

    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", answer)
    url = str((await aiohttp_server(upstream)).make_url("")).rstrip("/")
    metrics = [
        {"name": "clicks", "kind": "continuous"},
        {"name": "per_request", "kind": "ratio", "numerator": "clicks", "cuped": True},
        {"name": "error_rate", "kind": "ratio", "numerator": "errors", "cuped": True},
    ]
    r = await make_router(covariate="prior_clicks", metrics=metrics, urls={"control": url, "candidate": url})
    rng = np.random.default_rng(18)
    users = [f"user-{i}" for i in range(240)]
    activity, p = rng.lognormal(0, 0.6, len(users)), rng.beta(1, 9, len(users))
    prior = {u: float(rng.binomial(rng.poisson(12 * a) + 1, q)) for u, a, q in zip(users, activity, p)}
    requests = {u: int(rng.poisson(2 * a)) + 1 for u, a in zip(users, activity)}
    errors = {u: int(rng.binomial(requests[u], min(0.02 + 0.03 * prior[u], 0.9))) for u in users}
    clicks = {u: float(rng.binomial(requests[u], q)) for u, q in zip(users, p)}
    variants = {}

    async def visit(u: str) -> None:
        for k in range(requests[u]):
            path = "/fail" if k < errors[u] else "/predict"
            resp = await r.client.post(path, headers={"X-User-Id": u}, data=b"{}")
            assert resp.status == (500 if k < errors[u] else 200)
            variants[u] = resp.headers["X-AB-Variant"]
            resp.release()

    for chunk in range(0, len(users), 40):
        await asyncio.gather(*(visit(u) for u in users[chunk : chunk + 40]))
    body = [{"unit": u, "covariate": prior[u]} for u in users[::2]]
    body += [{"unit": u, "metric": "clicks", "value": clicks[u]} for u in users if clicks[u]]
    assert (await outcomes(r, body))[0] == 202
    await r.settle()
    late = [{"unit": u, "covariate": prior[u]} for u in users[1::2]]  # after the outcomes' flush
    assert (await outcomes(r, late))[0] == 202
    await r.settle()

    result = analyzer.analyze(await reader.read(redis_client, model.load(r.path)), now=2e9)
    per_user = (clicks, errors, requests, prior)
    raw = {arm: [np.array([v[u] for u in users if variants[u] == arm], dtype=float) for v in per_user] for arm in ARMS}
    for metric, numerator in (("per_request", 0), ("error_rate", 1)):  # over the requests, c = prior
        control, candidate = ((x[numerator], x[2], x[3]) for x in (raw["control"], raw["candidate"]))
        difference, variance, plain = reference(control, candidate)
        (c,) = [c for c in result.comparisons if c.metric == metric]
        df = min(Sample.from_ratio(*arm[:2]).effective_denominator_units for arm in (control, candidate)) - 1
        se = (c.absolute_ci[1] - c.absolute_ci[0]) / 2 / float(sps.t.isf(0.025, df))
        assert c.cuped and c.absolute_lift == pytest.approx(difference, rel=1e-9), metric
        assert se == pytest.approx(np.sqrt(variance), rel=1e-9), metric
        assert c.variance_reduction == pytest.approx(1 - variance / plain, rel=1e-9), metric
        assert c.variance_reduction > 0.05, metric
    (errors_builtin,) = [c for c in result.comparisons if c.metric == "errors"]
    assert not errors_builtin.cuped  # the built-in itself, a guardrail, stays unadjusted
