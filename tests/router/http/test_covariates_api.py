"""[regression] Several covariates over the real router HTTP API, a real Redis and `abrouter analyze`.

The analyzer's adjusted lift must be statsmodels' OLS treatment coefficient of
x ~ 1 + T + c₁ + c₂ on the same per-unit data (to 1e-9 relative), and its standard error
Welch's of the adjusted values x − (c − c̄)·θ̂ with statsmodels' slopes θ̂.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import redis.asyncio
import statsmodels.api as sm
from scipy import stats as sps

from abrouter import cli
from abrouter.analysis import analyzer, html_report, reader
from abrouter.contract import experiment as model
from tests.router.conftest import MakeRouter
from tests.router.http.test_api import expose, outcomes

COVARIATES = ["prior_clicks", "tenure"]


async def test_covariates_items_are_checked_and_a_bad_one_names_its_field(make_router: MakeRouter) -> None:
    r = await make_router(covariates=COVARIATES)
    await expose(r, "u1")
    status, body = await outcomes(
        r,
        [
            {"unit": "u1", "covariates": {"prior_clicks": 3, "tenure": 1.5}},  # fine
            {"unit": "u1", "covariates": {"prior_clicks": "3"}},  # not a number
            {"unit": "u1", "covariates": {"age": 3}},  # not declared
            {"unit": "u1", "covariates": {}},  # empty
            {"unit": "u1", "covariates": [3, 1]},  # not an object
            {"unit": "u1", "covariate": 3},  # which one?
            {"unit": "u1", "covariates": {"tenure": 1}, "covariate": 2},  # both spellings
        ],
    )
    assert status == 422 and body["code"] == "invalid_outcomes"
    assert [(i["index"], i["field"]) for i in body["items"]] == [
        (1, "covariates.prior_clicks"),
        (2, "covariates.age"),
        (3, "covariates"),
        (4, "covariates"),
        (5, "covariate"),
        (6, "covariate"),
    ]
    assert "declared: prior_clicks, tenure" in body["items"][1]["error"]
    one = await make_router(covariate="prior_clicks")  # the one-covariate experiment takes the object too
    await expose(one, "u1")
    assert (await outcomes(one, {"unit": "u1", "covariates": {"prior_clicks": 2}}))[0] == 202
    # One item with two covariates is one item accepted, one outcome per covariate.
    status, body = await outcomes(r, {"unit": "u1", "covariates": {"prior_clicks": 3, "tenure": 1.5}})
    assert status == 202 and body["accepted"] == 1 and body["by_metric"] == {"prior_clicks": 1, "tenure": 1}


async def test_two_covariates_over_http_give_statsmodels_ols_through_abrouter_analyze(
    make_router: MakeRouter, redis_client: redis.asyncio.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = [{"name": "revenue", "kind": "continuous"}, {"name": "conversion", "kind": "binary"}]
    r = await make_router(covariates=COVARIATES, metrics=metrics)
    rng = np.random.default_rng(1818)
    users = [f"user-{i}" for i in range(300)]
    clicks = rng.poisson(5, len(users)).astype(float)
    tenure = np.round(0.5 * clicks + rng.gamma(2.0, 1.0, len(users)), 3)  # correlated with clicks
    prior = {u: (float(a), float(b)) for u, a, b in zip(users, clicks, tenure)}
    revenue = {u: float(1.5 * a + 2.0 * b + rng.normal(0, 2)) for u, (a, b) in prior.items()}
    variants = {}
    for chunk in range(0, len(users), 50):
        for u, (_, v) in zip(
            users[chunk : chunk + 50], await asyncio.gather(*(expose(r, u) for u in users[chunk : chunk + 50]))
        ):
            variants[u] = v
    # A third report both covariates at once; a third one now and the other after a flush;
    # a third the second first. Some send a later, different value: ignored.
    both, split, reverse = users[0::3], users[1::3], users[2::3]
    body = [{"unit": u, "covariates": dict(zip(COVARIATES, prior[u]))} for u in both]
    body += [{"unit": u, "covariates": {"prior_clicks": prior[u][0]}} for u in split]
    body += [{"unit": u, "covariates": {"tenure": prior[u][1]}} for u in reverse]
    assert (await outcomes(r, body))[0] == 202
    assert (await outcomes(r, [{"unit": u, "metric": "revenue", "value": revenue[u]} for u in users]))[0] == 202
    await r.settle()
    body = [{"unit": u, "covariates": {"tenure": prior[u][1]}} for u in split]
    body += [{"unit": u, "covariates": {"prior_clicks": prior[u][0]}} for u in reverse]
    body += [{"unit": u, "covariates": {"prior_clicks": 99.0, "tenure": 99.0}} for u in users[::7]]  # later: ignored
    assert (await outcomes(r, body))[0] == 202
    await r.settle()

    argv = ["analyze", "--config", str(r.path), "--redis-url", redis_url, "--json"]
    assert await asyncio.to_thread(cli.main, argv) == 0  # asyncio.run needs a thread without a loop
    printed = json.loads(capsys.readouterr().out)
    (got,) = [c for c in printed["comparisons"] if c["metric"] == "revenue"]
    x = np.array([revenue[u] for u in users])
    treated = np.array([variants[u] == "candidate" for u in users], dtype=float)
    c = np.array([prior[u] for u in users])
    ols = sm.OLS(x, np.column_stack([np.ones(len(users)), treated, c])).fit()
    assert got["absolute_lift"] == pytest.approx(ols.params[1], rel=1e-9)
    theta = ols.params[2:]
    y = x - (c - c.mean(axis=0)) @ theta
    yc, yt = y[treated == 0], y[treated == 1]
    vc, vt = yc.var(ddof=1) / yc.size, yt.var(ddof=1) / yt.size
    welch, df = np.sqrt(vc + vt), (vc + vt) ** 2 / (vc**2 / (yc.size - 1) + vt**2 / (yt.size - 1))
    lo, hi = got["absolute_ci"]
    assert (hi - lo) / 2 / sps.t.isf(0.025, df) == pytest.approx(welch, rel=1e-9)  # Welch's t interval
    plain = np.sqrt(x[treated == 0].var(ddof=1) / (treated == 0).sum() + x[treated == 1].var(ddof=1) / treated.sum())
    assert got["cuped"] and got["variance_reduction"] > 0.5 and welch < plain / 2  # revenue ≈ 1.5·c₁ + 2·c₂ + noise
    # `abrouter report` names the covariates that adjusted each comparison.
    experiment = model.load(r.path)
    result = analyzer.analyze(await reader.read(redis_client, experiment), now=2e9)
    page = html_report.render(experiment, result, [])
    assert (
        "covariates <b>prior_clicks</b>, <b>tenure</b>" in page
        and "revenue for candidate by prior_clicks + tenure" in page
    )
