"""Issue 7 #5 and readyz: the outcome and admin endpoints behind an optional bearer token;
no salt, upstream address or DNS result on an unauthenticated response. Real sockets."""

from __future__ import annotations

import logging

import pytest

from abrouter.router.redis_server import free_port
from tests.router.conftest import MakeRouter

TOKEN = b"s3cret-token-0123456789"


async def test_without_a_token_the_experiment_shows_neither_salt_nor_upstreams(make_router: MakeRouter) -> None:
    r = await make_router(salt="do-not-tell")
    exp = await (await r.client.get("/abrouter/experiment")).json()
    assert "salt" not in exp["spec"] and all("upstream" not in v for v in exp["spec"]["variants"])
    assert [v["name"] for v in exp["spec"]["variants"]] == ["control", "candidate"]


async def test_a_502_names_no_upstream_address(make_router: MakeRouter) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    r = await make_router({"control": 100, "candidate": 0}, urls={"control": dead})
    resp = await r.client.post("/predict", headers={"X-User-Id": "u1"}, data=b"{}")
    body = await resp.text()
    assert resp.status == 502 and "127.0.0.1" not in body and dead not in body
    assert (await resp.json())["error"] == "variant 'control': upstream unavailable"


async def test_with_a_token_outcomes_and_the_experiment_need_it(
    make_router: MakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await make_router(api_token=TOKEN, salt="do-not-tell")
    resp = await r.client.post("/predict", headers={"X-User-Id": "u1"}, data=b"{}")
    resp.release()
    outcome = {"unit": "u1", "metric": "revenue", "value": 1e6}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN.decode()}):
        resp = await r.client.post("/abrouter/outcomes", json=outcome, headers=headers)
        assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        resp = await r.client.get("/abrouter/experiment", headers=headers)
        assert resp.status == 401
    good = {"Authorization": f"Bearer {TOKEN.decode()}"}
    resp = await r.client.post("/abrouter/outcomes", json=outcome, headers=good)
    assert resp.status == 202
    exp = await (await r.client.get("/abrouter/experiment", headers=good)).json()
    assert exp["spec"]["salt"] == "do-not-tell" and all(v["upstream"] for v in exp["spec"]["variants"])
    assert (await r.client.get("/abrouter/healthz")).status == 200  # probes need no token
    await r.settle()
    assert sum(s.metrics["revenue"].events for s in (await r.strata()).values()) == 1  # only the authorized one
    assert TOKEN.decode() not in caplog.text and TOKEN.decode() not in repr(r.router)


async def test_readyz_without_an_event_log_says_disabled(make_router: MakeRouter) -> None:
    r = await make_router(event_log=False)
    ready = await (await r.client.get("/abrouter/readyz")).json()
    assert ready["status"] == "ready" and ready["redis"] == "disabled"
