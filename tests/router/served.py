"""A real router serving on 127.0.0.1 (the listener `abrouter serve` runs), and a client for it."""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp

from abrouter.contract.experiment import Experiment
from abrouter.router import serving
from abrouter.router.http.listener import Listener
from abrouter.router.settings import ServeSettings
from abrouter.router.sources.base import SpecSource
from abrouter.router.state import Router


class RouterClient:
    """``client.get("/predict")``: aiohttp requests to the router by path (a real socket, keep-alive)."""

    def __init__(self, router: Router, server: Listener, stack: contextlib.AsyncExitStack) -> None:
        self.router = router
        self.server = server
        self.base = f"http://127.0.0.1:{server.port}"
        # unsafe: the router's cookies are for 127.0.0.1, an IP address.
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), auto_decompress=False)
        self._stack = stack
        self.closed = False

    @property
    def port(self) -> int:
        return self.server.port

    def make_url(self, path: str) -> str:
        return self.base + path

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, self.base + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Any:
        return self.request("HEAD", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    async def close(self) -> None:
        """Stop the router as SIGTERM does: drain, close, final flush."""
        if self.closed:
            return
        self.closed = True
        try:
            await self.session.close()
        finally:
            await self._stack.aclose()


async def serve(
    experiment: Experiment,
    settings: ServeSettings,
    *,
    source: SpecSource | None = None,
    shutdown_timeout_s: float = 5.0,
) -> RouterClient:
    stack = contextlib.AsyncExitStack()
    plan = serving.Plan(experiment=experiment, settings=settings, source=source, shutdown_timeout_s=shutdown_timeout_s)
    router, server = await stack.enter_async_context(serving.serving(plan))
    return RouterClient(router, server, stack)
