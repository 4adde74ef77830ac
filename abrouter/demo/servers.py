"""The demo's model servers: real aiohttp servers on 127.0.0.1 speaking the Open Inference Protocol.

``POST /v2/models/NAME/infer`` with the user id as an INT64 input answers the top-k items
as an INT64 output, as KServe, Triton and MLServer do::

    {"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [42]}]}
    -> {"model_name": "recommender", "model_version": "popularity",
        "outputs": [{"name": "items", "datatype": "INT64", "shape": [10], "data": [7, 3, ...]}]}

Also ``GET /v2/health/ready``. A bad request is a 400 with ``{"error": "..."}`` (the
protocol's error shape), a model it does not serve a 404.

Three servers: the main experiment's control and candidate (``recommender``, each on its
own server, the candidate 3 ms slower), and one multi-model server for the second
experiment, serving ``ranker-popular`` and ``ranker-explore``: the router's per-arm
``model:`` rewrite sends each arm's ``/v2/models/ranker/infer`` to its own model there.

`in_thread` runs them on their own event loop in a thread, as model servers are their own
services: sharing the simulated users' loop, on a busy machine the candidate's 3 ms pause
lasted a whole turn of that loop (100 ms and more), the latency guardrail saw a slow
model that the demo never meant, and rolled it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from abrouter.demo.world import Model, World

#: The model name the main experiment's clients ask for, served by both its arms.
MODEL = "recommender"
#: The model name the second experiment's clients ask for, and each of its arms' own names.
RANKER = "ranker"
RANKER_MODELS: dict[str, Model] = {"ranker-popular": "control", "ranker-explore": "explore"}
#: What each ranking answers as its ``model_version``.
VERSIONS: dict[Model, str] = {"control": "popularity", "candidate": "mf", "explore": "random"}


@dataclass(frozen=True)
class Urls:
    """The base URL of each model server."""

    control: str
    candidate: str
    ranker: str


def model_app(world: World, models: Mapping[str, Model], *, delay_ms: float = 0.0) -> web.Application:
    """Serve each of `models` (the name in the path -> the world's ranking) at ``/v2/models/NAME/infer``."""

    async def infer(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in models:
            return web.json_response({"error": f"no model {name!r} here"}, status=404)
        try:
            doc = json.loads(await request.read())
            (first,) = [i for i in doc["inputs"] if i["name"] == "user_id"]
            user = int(first["data"][0])
        except (ValueError, KeyError, TypeError, IndexError):
            return web.json_response({"error": "expected one INT64 input named user_id"}, status=400)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        items = world.recommend(models[name], user)
        out = {"name": "items", "datatype": "INT64", "shape": [len(items)], "data": items}
        return web.json_response({"model_name": name, "model_version": VERSIONS[models[name]], "outputs": [out]})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return app


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free port of 127.0.0.1; returns the runner and its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


T = TypeVar("T")


@contextlib.asynccontextmanager
async def in_thread(world: World, *, candidate_delay_ms: float) -> AsyncIterator[Urls]:
    """Every model server, on a thread's own event loop; yields their base URLs."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="abrouter-demo-models", daemon=True)
    thread.start()

    async def on(coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    runners: list[web.AppRunner] = []
    try:
        urls = []
        served: list[tuple[Mapping[str, Model], float]] = [
            ({MODEL: "control"}, 0.0),
            ({MODEL: "candidate"}, candidate_delay_ms),
            (RANKER_MODELS, 0.0),
        ]
        for models, delay in served:
            runner, url = await on(start(model_app(world, models, delay_ms=delay)))
            runners.append(runner)
            urls.append(url)
        yield Urls(*urls)
    finally:
        for runner in runners:
            await on(runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()
