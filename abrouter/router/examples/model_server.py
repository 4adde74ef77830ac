"""A stand-in recommendation model server, so the quick start runs without a real model.

It answers ``POST /predict`` (and any other path) with JSON recommendations that depend
on the user and the model's name, like a real model would, and ``GET /health``. The
`delay_ms` knob makes one model slower, so latency guardrails have something to see.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from aiohttp import web

CATALOG = [f"item-{i:03d}" for i in range(200)]


def recommend(model: str, user: str, k: int = 5) -> list[str]:
    seed = hashlib.blake2b(f"{model}:{user}".encode(), digest_size=8).digest()
    start = int.from_bytes(seed, "big") % len(CATALOG)
    step = 7 if model.endswith("b") or "candidate" in model else 3
    return [CATALOG[(start + i * step) % len(CATALOG)] for i in range(k)]


def build_model_app(name: str, *, delay_ms: float = 0.0) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        body = await request.read()
        user = request.headers.get("X-User-Id", "anonymous")
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        payload = {"model": name, "user": user, "items": recommend(name, user), "input_bytes": len(body)}
        return web.Response(
            body=json.dumps(payload).encode(), content_type="application/json", headers={"X-Model": name}
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": name})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", predict)
    return app


async def start_model_server(name: str, host: str, port: int, *, delay_ms: float = 0.0) -> web.AppRunner:
    runner = web.AppRunner(build_model_app(name, delay_ms=delay_ms), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
