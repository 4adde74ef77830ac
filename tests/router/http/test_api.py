"""Reserved endpoints and the outcome API, over real sockets with a real Redis."""

from __future__ import annotations

import math

from tests.router.conftest import MakeRouter, RouterUnderTest


async def expose(r: RouterUnderTest, user: str) -> tuple[str, str]:
    resp = await r.client.post("/predict", headers={"X-User-Id": user}, data=b"{}")
    assert resp.status == 200
    resp.release()
    return resp.headers["X-AB-Request-Id"], resp.headers["X-AB-Variant"]


async def outcomes(r: RouterUnderTest, body) -> tuple[int, dict]:
    resp = (
        await r.client.post("/abrouter/outcomes", json=body)
        if not isinstance(body, (bytes, str))
        else await r.client.post("/abrouter/outcomes", data=body)
    )
    return resp.status, await resp.json()


async def test_outcomes_by_request_id_and_by_unit_are_credited_to_the_served_variant(make_router: MakeRouter):
    r = await make_router()
    rid, variant = await expose(r, "u1")
    _, variant2 = await expose(r, "u2")
    status, body = await outcomes(
        r,
        [
            {"request_id": rid, "metric": "conversion", "value": 1},
            {"request_id": rid, "metric": "revenue", "value": 12.5},
            {"unit": "u2", "metric": "revenue", "value": 3},
            {"unit": "u2", "metric": "revenue", "value": 4},
            {"unit": "u2", "metric": "conversion", "value": True},
        ],
    )
    assert status == 202 and body == {"accepted": 5, "by_metric": {"conversion": 2, "revenue": 3}, "repeated": 0}
    await r.settle()
    strata = await r.strata()
    s1, s2 = strata[(1, variant)], strata[(1, variant2)]
    if variant == variant2:
        assert s1.metrics["revenue"].sum == 19.5 and s1.metrics["conversion"].sum == 2
    else:
        assert s1.metrics["revenue"].sum == 12.5 and s1.metrics["revenue"].sum_sq == 12.5**2
        assert s2.metrics["revenue"].sum == 7 and s2.metrics["revenue"].sum_sq == 49  # unit-level: (3+4)^2
        assert s2.metrics["conversion"].sum == 1


async def test_outcomes_with_an_event_id_count_once_however_often_they_are_sent(make_router: MakeRouter):
    r = await make_router()
    _, variant1 = await expose(r, "u1")
    rid, variant2 = await expose(r, "u2")
    batch = [
        {"unit": "u1", "metric": "revenue", "value": 5, "event_id": "order-1"},
        {"unit": "u1", "metric": "revenue", "value": 5, "event_id": "order-1"},  # a client that sent it twice
        {"request_id": rid, "metric": "conversion", "value": 1, "event_id": "click-7"},
        {"unit": "u1", "metric": "revenue", "value": 2},  # no event_id: counted every time
    ]
    status, body = await outcomes(r, batch)
    assert status == 202 and body == {"accepted": 4, "by_metric": {"revenue": 2, "conversion": 1}, "repeated": 1}
    await r.settle()
    status, _ = await outcomes(r, batch)  # the client lost the 202 and resends the whole batch
    assert status == 202
    await r.settle()
    other = await make_router()  # ...or resends it to another replica
    assert (await outcomes(other, batch[:1]))[0] == 202
    await other.settle()

    strata = await r.strata()
    u1, u2 = strata[(1, variant1)], strata[(1, variant2)]
    if variant1 == variant2:
        assert u1.metrics["revenue"].sum == 5 + 2 + 2 and u1.metrics["conversion"].sum == 1
    else:
        assert u1.metrics["revenue"].events == 3 and u1.metrics["revenue"].sum == 9
        assert u1.metrics["revenue"].sum_sq == 81  # one unit: x_u = 5 + 2 + 2
        assert (u2.metrics["conversion"].events, u2.metrics["conversion"].sum) == (1, 1)
    # This replica: the repeat inside each of its two batches, then order-1 and click-7 resent.
    metrics_text = await (await r.client.get("/abrouter/metrics")).text()
    assert f'\nabrouter_outcomes_repeated_total{{experiment="{r.keys.experiment}"}} 4\n' in metrics_text


async def test_outcome_for_a_unit_seen_only_in_redis(make_router: MakeRouter):
    """A unit exposed through one replica, credited through another (a fresh app, empty cache)."""
    r = await make_router()
    _, variant = await expose(r, "u-remote")
    await r.settle()
    other = await make_router()  # same experiment and Redis, new process state
    status, body = await outcomes(other, {"unit": "u-remote", "metric": "revenue", "value": 2})
    assert status == 202, body
    await other.settle()
    assert (await other.strata())[(1, variant)].metrics["revenue"].sum == 2


async def test_invalid_items_reject_the_whole_batch_and_are_each_named(make_router: MakeRouter):
    r = await make_router()
    rid, _ = await expose(r, "u1")
    status, body = await outcomes(
        r,
        [
            {"request_id": rid, "metric": "conversion", "value": 1},  # fine
            {"request_id": rid, "metric": "clicks", "value": 1},  # unknown metric
            {"request_id": rid, "metric": "conversion", "value": 0.5},  # wrong kind
            {"request_id": rid, "metric": "revenue", "value": "12"},  # not a number
            {"request_id": "A" * 42, "metric": "revenue", "value": 1},  # unknown id
            {"unit": "never-seen", "metric": "revenue", "value": 1},  # never exposed
            {"metric": "revenue", "value": 1},  # nobody to credit
            {"request_id": rid, "unit": "u1", "metric": "revenue", "value": 1},
            {"request_id": rid, "metric": "revenue", "value": 1, "extra": 1},
            {"request_id": rid, "metric": "revenue", "value": 1, "event_id": 42},
        ],
    )
    assert status == 422 and body["code"] == "invalid_outcomes"
    assert [(i["index"], i["field"]) for i in body["items"]] == [
        (1, "metric"),
        (2, "value"),
        (3, "value"),
        (4, "request_id"),
        (5, "unit"),
        (6, "request_id"),
        (7, "request_id"),
        (8, "extra"),
        (9, "event_id"),
    ]
    assert "unknown metric 'clicks'; known: conversion, revenue" in body["items"][0]["error"]
    assert body["items"][4]["error"].startswith("unit 'never-seen' has no exposure in this experiment")
    await r.settle()
    assert (
        sum(
            m.events
            for s in (await r.strata()).values()
            for n, m in s.metrics.items()
            if n in ("conversion", "revenue")
        )
        == 0
    )  # all or nothing


async def test_non_finite_values_are_rejected(make_router: MakeRouter):
    r = await make_router()
    rid, _ = await expose(r, "u1")
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        status, body = await outcomes(r, f'{{"request_id": "{rid}", "metric": "revenue", "value": {literal}}}')
        assert status == 422 and "finite" in body["items"][0]["error"], (literal, body)
    assert math.isinf(float("1e999"))


async def test_absurd_numbers_and_nesting_are_client_errors(make_router: MakeRouter):
    r = await make_router()
    rid, _ = await expose(r, "u1")
    status, body = await outcomes(r, f'{{"request_id": "{rid}", "metric": "revenue", "value": {"1" * 400}}}')
    assert status == 422 and "too large" in body["items"][0]["error"]
    status, body = await outcomes(r, "[" * 100_000)
    assert status == 400 and body["code"] == "invalid_body"


async def test_expired_request_id(make_router: MakeRouter):
    r = await make_router(outcome_ttl="1s")
    rid, _ = await expose(r, "u1")
    import asyncio

    await asyncio.sleep(2.1)
    status, body = await outcomes(r, {"request_id": rid, "metric": "revenue", "value": 1})
    assert status == 422 and "expired" in body["items"][0]["error"]


async def test_body_shape_errors(make_router: MakeRouter):
    r = await make_router()
    assert (await outcomes(r, b"not json"))[0] == 400
    assert (await outcomes(r, []))[1]["code"] == "invalid_body"
    status, body = await outcomes(r, [{"unit": "u", "metric": "revenue", "value": 1}] * 1001)
    assert status == 400 and "1001 > 1000" in body["error"]
    assert (await outcomes(r, "42"))[0] == 400


async def test_a_full_batch_of_1000_is_accepted(make_router: MakeRouter):
    r = await make_router()
    rid, variant = await expose(r, "u1")
    status, body = await outcomes(r, [{"request_id": rid, "metric": "revenue", "value": 1}] * 1000)
    assert status == 202 and body["accepted"] == 1000
    await r.settle()
    assert (await r.strata())[(1, variant)].metrics["revenue"].events == 1000


async def test_reserved_endpoints(make_router: MakeRouter):
    r = await make_router(epoch=20250101)  # a date-like epoch must print with every digit
    await expose(r, "u1")
    assert (await (await r.client.get("/abrouter/healthz")).json()) == {"status": "ok"}
    ready = await (await r.client.get("/abrouter/readyz")).json()
    assert ready["status"] == "ready" and ready["redis"] == "up"
    exp = await (await r.client.get("/abrouter/experiment")).json()
    assert exp["epoch"] == 20250101 and exp["weights"] == {"control": 0.5, "candidate": 0.5}
    assert exp["spec"]["name"] == r.spec["name"]
    text = await (await r.client.get("/abrouter/metrics")).text()
    name = r.spec["name"]
    for line in (
        "# TYPE abrouter_requests_total counter",
        "# TYPE abrouter_request_duration_seconds histogram",
        "# TYPE abrouter_eventlog_buffered_events gauge",
        "# TYPE abrouter_eventlog_spilled_events gauge",
        "# TYPE abrouter_eventlog_flush_failures_total counter",
        f'abrouter_eventlog_flush_failures_total{{experiment="{name}"}} 0',
        f'abrouter_redis_up{{experiment="{name}"}} 1',
        f'abrouter_weights_epoch{{experiment="{name}"}} 20250101',
    ):
        assert line in text.splitlines(), line
    assert any(line.startswith("abrouter_requests_total{") and line.endswith(" 1") for line in text.splitlines())
    assert any(
        line.startswith("abrouter_request_duration_seconds_bucket{") and 'le="+Inf"' in line and line.endswith(" 1")
        for line in text.splitlines()
    )
    missing = await r.client.get("/abrouter/nope")
    assert missing.status == 404 and (await missing.json())["code"] == "not_found"
    wrong = await r.client.get("/abrouter/outcomes")
    assert wrong.status == 405 and (await wrong.json())["code"] == "method_not_allowed"
