"""The upstream clients' shared fixtures: a counting HTTP server and an httptools transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from abrouter.router.upstream.httpclient import HttptoolsTransport
from abrouter.router.upstream.transport import TimeoutConfig
from tests.router.upstream.test_httpclient import counting_app


@pytest.fixture
async def counting(aiohttp_server: Any) -> tuple[str, set[int]]:
    """`counting_app` served on 127.0.0.1: its base URL and the client ports it has seen."""
    app, ports = counting_app()
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), ports


@pytest.fixture
async def transport() -> AsyncIterator[HttptoolsTransport]:
    t = HttptoolsTransport(TimeoutConfig(connect_s=1, read_s=0.5))
    yield t
    await t.close()
