"""Shared fixtures: a real Redis (never a fake) and a clean namespace per test.

``REDIS_URL`` in the environment points the whole session at an existing Redis;
otherwise one private ``redis-server`` is started for the session. Tests that kill or
restart Redis use `redis_server`, which is always private to the test. Tests on a Redis
Cluster share `redis_cluster`, three private masters started once per session.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from abrouter.router.redis_cluster import LocalCluster
from abrouter.router.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The session's Redis: ``REDIS_URL`` when set, else a private server."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A private 3-master Redis Cluster on 127.0.0.1, shared by the session (started on first use)."""
    with LocalCluster(3) as cluster:
        yield cluster


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private Redis for this test alone, free to kill() and restart()."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def experiment_name(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    """A unique experiment name (a DNS-1123 label); its keys are deleted afterwards.

    Every key of an experiment carries its hash tag ``{name}``, so a unique name is a
    clean namespace even on a shared ``REDIS_URL``, where FLUSHDB would be rude.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{secrets.token_hex(4)}"
    yield name
    forget(redis_url, [name])


def forget(redis_url: str, names: list[str]) -> None:
    """Delete every key of these experiments (each carries its hash tag ``{name}``)."""
    client = redis.Redis.from_url(redis_url)
    try:
        for name in names:
            keys = list(client.scan_iter(match=f"*{{{name}}}*", count=1000))
            if keys:
                client.delete(*keys)
    except redis.ConnectionError:
        pass  # the test stopped its Redis; nothing left to clean
    finally:
        client.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client for the session's Redis, closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
