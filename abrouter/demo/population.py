"""Simulated users: they ask the router for recommendations, click by the ground truth, report back.

Each request picks a user at random, sends the Open Inference Protocol request for one
model (``/v2/models/NAME/infer``: the router's ``match:`` picks the experiment by that
name) with the user's id in ``X-User-Id``, "clicks" each shown item with the probability the world's
ground truth gives, and reports ``impressions`` and ``clicks`` for that request id to
``POST /abrouter/outcomes``. Requests start at a steady rate, with a bounded number in
flight, until `stop` is set; traffic goes to 127.0.0.1 only. The demo runs one population
per model, each with its own rate and `Traffic`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from abrouter.demo.world import World

MAX_IN_FLIGHT = 64


@dataclass
class Traffic:
    """What the users saw, for the progress view."""

    requests: int = 0
    failed: int = 0
    by_variant: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.requests / max(time.monotonic() - self.started, 1e-9)


async def run(
    world: World, base_url: str, *, model: str, rps: float, seed: int, stop: asyncio.Event, traffic: Traffic
) -> None:
    rng = np.random.default_rng(seed)
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as s:
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                await slots.acquire()
                user = int(rng.integers(world.users))
                draws = rng.random(len(world.recommend("control", 0)))
                task = asyncio.create_task(_one(s, world, f"/v2/models/{model}/infer", user, draws, traffic))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: slots.release())
                next_at += 1 / rps
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:  # cancelled (Ctrl-C): the requests in flight end before their session closes
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _one(
    s: aiohttp.ClientSession, world: World, path: str, user: int, draws: np.ndarray, traffic: Traffic
) -> None:
    body = {"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [user]}]}
    try:
        async with s.post(path, json=body, headers={"X-User-Id": f"user-{user}"}) as r:
            doc = await r.json() if r.status == 200 else None
            request_id, variant = r.headers.get("X-AB-Request-Id"), r.headers.get("X-AB-Variant", "?")
        traffic.requests += 1
        if doc is None or request_id is None:
            traffic.failed += 1
            return
        traffic.by_variant[variant] += 1
        items = doc["outputs"][0]["data"]
        clicks = int(sum(d < world.truth[user, i] for d, i in zip(draws, items)))
        outcomes = [
            {"request_id": request_id, "metric": "impressions", "value": len(items)},
            {"request_id": request_id, "metric": "clicks", "value": clicks},
        ]
        async with s.post("/abrouter/outcomes", json=outcomes) as r:
            if r.status != 202:
                traffic.failed += 1
    except (TimeoutError, aiohttp.ClientError):
        traffic.failed += 1
