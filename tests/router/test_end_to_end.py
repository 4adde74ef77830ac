"""The whole loop: router -> Redis -> analyzer -> config file -> the router reloads it."""

from __future__ import annotations

import asyncio

import redis.asyncio

from abrouter.analysis import service
from abrouter.analysis.sinks.file import FileSink
from abrouter.contract import experiment as model
from tests.router.conftest import MakeRouter


async def test_an_applied_ramp_reaches_the_router_as_a_new_epoch(make_router: MakeRouter):
    r = await make_router(
        {"control": 95, "candidate": 5}, analysis={"min_units_per_arm": 10, "ramp": [5, 25, 50], "guardrails": []}
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
