"""The whole loop: router -> Redis -> analyzer -> config file -> the router reloads it."""

from __future__ import annotations

import asyncio

import redis.asyncio

from abrouter.analysis import service
from abrouter.analysis.sinks.file import FileSink
from abrouter.contract import experiment as model
from tests.router.conftest import MakeRouter

#: Hundreds of requests 20 at a time: on a loaded machine the fixture's 0.5 s read timeout is a 504 now and then.
PATIENT = {"connect": 5, "read": 30}


async def test_an_applied_ramp_reaches_the_router_as_a_new_epoch(make_router: MakeRouter):
    r = await make_router(
        {"control": 95, "candidate": 5},
        analysis={"min_units_per_arm": 10, "ramp": [5, 25, 50], "guardrails": []},
        timeouts=PATIENT,
    )
    gate = asyncio.Semaphore(20)

    async def visit(user: str) -> None:
        async with gate:
            resp = await r.client.post("/predict", headers={"X-User-Id": user}, data=b"{}")
            assert resp.status == 200
            resp.release()

    await asyncio.gather(*(visit(f"user-{i}") for i in range(600)))
    await r.settle()
    client = redis.asyncio.Redis.from_url(r.redis_url)
    try:
        result = await service.look(client, model.load(r.path), sink=FileSink(r.path))
        entries = await client.xrange(r.keys.decisions)
    finally:
        await client.aclose()
    assert result.decision.action == "ramp", result.decision.reason
    assert result.decision.weights == {"control": 75.0, "candidate": 25.0}
    assert len(entries) == 1
    await r.wait_for_epoch(2)
    assert r.lane.table.weights_by_name() == {"control": 0.75, "candidate": 0.25}
    # A returning user stays in epoch 1 (intent-to-treat); a new one starts epoch 2's strata.
    for user in ("user-1", "user-new"):
        resp = await r.client.post("/predict", headers={"X-User-Id": user}, data=b"{}")
        resp.release()
    await r.settle()
    assert {epoch for epoch, _ in await r.strata()} == {1, 2}


async def test_a_balanced_ramp_grows_control_and_candidate_together_and_moves_units_only_out_of_the_rest(
    make_router: MakeRouter, upstream_urls: dict[str, str]
):
    """`analysis.ramp_rest`: the rest serves the control's model, is never compared, and gives up units."""
    analysis = {"min_units_per_arm": 10, "ramp": [5, 25, 50], "ramp_rest": "rest", "guardrails": []}
    r = await make_router(
        {"control": 5, "candidate": 5, "rest": 90},
        urls={"rest": upstream_urls["control"]},
        analysis=analysis,
        timeouts=PATIENT,
    )
    gate = asyncio.Semaphore(20)
    users = [f"user-{i}" for i in range(800)]

    async def visit(user: str) -> tuple[str, str]:
        async with gate:
            resp = await r.client.post("/predict", headers={"X-User-Id": user}, data=b"{}")
            assert resp.status == 200
            resp.release()
            return resp.headers["X-AB-Variant"], resp.headers["X-Upstream"]

    before = dict(zip(users, await asyncio.gather(*(visit(u) for u in users))))
    assert {upstream for variant, upstream in before.values() if variant == "rest"} == {"control"}  # its model
    await r.settle()
    client = redis.asyncio.Redis.from_url(r.redis_url)
    try:
        result = await service.look(client, model.load(r.path), sink=FileSink(r.path))
    finally:
        await client.aclose()
    assert result.decision.action == "ramp", result.decision.reason
    assert result.decision.weights == {"control": 25.0, "candidate": 25.0, "rest": 50.0}
    assert {c.variant for c in result.comparisons} == {"candidate"}  # the rest is not compared ...
    assert set(result.srm.observed) == {"control", "candidate", "rest"}  # ... but counted for the SRM
    await r.wait_for_epoch(2)
    after = dict(zip(users, await asyncio.gather(*(visit(u) for u in users))))
    moved = {(before[u][0], after[u][0]) for u in users if before[u][0] != after[u][0]}
    assert moved == {("rest", "control"), ("rest", "candidate")}  # never between control and candidate
