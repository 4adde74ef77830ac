"""Fixtures for the proxy tests: real upstream servers, a real router app, real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import yaml

from abrouter.contract import experiment as model
from abrouter.contract.keys import Keys, StratumSums, decode_agg
from abrouter.router.settings import ServeSettings
from abrouter.router.sources.file import FileSource
from abrouter.router.state import Lane, Router
from tests.router.served import RouterClient, serve
from tests.router.upstreams import RawUpstream, model_app


@dataclass
class RouterUnderTest:
    client: RouterClient
    path: Path
    spec: dict[str, Any]
    keys: Keys
    redis_url: str

    @property
    def router(self) -> Router:
        return self.client.router

    @property
    def lane(self) -> Lane:
        return self.client.lane

    def write_spec(self, **changes: Any) -> None:
        self.spec.update(changes)
        self.path.write_text(yaml.safe_dump(self.spec))

    async def wait_for_epoch(self, epoch: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.client.lane.table.epoch != epoch:
            assert time.monotonic() < deadline, f"epoch {epoch} not loaded: {self.client.lane.source.last_error}"
            await asyncio.sleep(0.02)

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until every recorded event has reached Redis."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.client.lane.eventlog.stats
            if not (stats.buffered or stats.spilled or not stats.redis_up):
                break
            assert time.monotonic() < deadline, f"event log did not drain: {stats}"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # a flush in progress lands

    async def strata(self) -> dict[tuple[int, str], StratumSums]:
        client = redis.asyncio.Redis.from_url(self.redis_url)
        try:
            return decode_agg(await client.hgetall(self.keys.agg))
        finally:
            await client.aclose()


MakeRouter = Callable[..., Awaitable[RouterUnderTest]]


@pytest.fixture
async def upstream_urls(aiohttp_server: Any) -> dict[str, str]:
    urls = {}
    for name in ("control", "candidate", "third"):
        server = await aiohttp_server(model_app(name))
        urls[name] = str(server.make_url("")).rstrip("/")
    return urls


@pytest.fixture
async def raw_upstream() -> Any:
    server = await RawUpstream().start()
    yield server
    await server.close()


@pytest.fixture
def upstream_transport() -> str:
    """The upstream client `make_router` builds; parametrize this name to run a test on both::

    pytestmark = pytest.mark.parametrize("upstream_transport", ["aiohttp", "httptools"])
    """
    return "httptools"


@pytest.fixture
async def make_router(
    redis_url: str,
    experiment_name: str,
    tmp_path: Path,
    upstream_urls: dict[str, str],
    upstream_transport: str,
) -> AsyncIterator[MakeRouter]:
    clients: list[RouterClient] = []

    async def make(
        weights: dict[str, float] | None = None,
        *,
        urls: dict[str, str] | None = None,
        redis: str | None = None,
        transport: str | None = None,
        api_token: bytes = b"",
        event_log: bool = True,
        **spec_changes: Any,
    ) -> RouterUnderTest:
        weights = weights or {"control": 50, "candidate": 50}
        urls = {**upstream_urls, **(urls or {})}
        spec = {
            "name": experiment_name,
            "unit": {"header": "X-User-Id"},
            "variants": [{"name": n, "upstream": urls[n], "weight": w} for n, w in weights.items()],
            "metrics": [{"name": "conversion", "kind": "binary"}, {"name": "revenue", "kind": "continuous"}],
            "timeouts": {"connect": 1, "read": 0.5},
            **spec_changes,
        }
        path = tmp_path / "experiment.yaml"
        path.write_text(yaml.safe_dump(spec))
        url = redis or redis_url
        settings = ServeSettings(
            redis_url=url,
            spill_dir=tmp_path / "spill",
            flush_interval_s=0.05,
            upstream_transport=transport or upstream_transport,
            api_token=api_token,
            event_log=event_log,
        )  # type: ignore[arg-type]
        client = await serve(model.load(path), settings, source=FileSource(path, interval_s=0.05))
        clients.append(client)
        return RouterUnderTest(client=client, path=path, spec=spec, keys=Keys(experiment_name), redis_url=url)

    yield make
    for client in reversed(clients):
        await client.close()
