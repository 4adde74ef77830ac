"""The one place that builds a Redis client: a single server or a Redis Cluster, from any node's URL.

Every command (`abrouter serve`, `analyze`, `report`, `demo`) and the router's event log
take a ``--redis-url`` and build their client here. `connect` asks the node it was given
(``INFO cluster``) whether cluster mode is on and returns redis-py's cluster client when
it is: that client reads the slot map from the node, sends each command to the master
that owns its keys' slot, follows MOVED and ASK (a resharding in progress) and reloads
the map when it changes. The keys of one experiment share a hash tag
(`abrouter.contract.keys`), so every multi-key command and script call stays in one slot.

A node that refuses ``INFO`` (some managed services rename it) is taken for a single
server; a node that cannot be reached raises, so the caller can retry the detection later.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

#: What `connect` returns. Both speak the commands abrouter uses (EVALSHA, HGETALL,
#: MULTI/EXEC pipelines within one hash tag, XADD, ...).
Client: TypeAlias = "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster"


async def connect(url: str, *, max_connections: int | None = None, **options: Any) -> Client:
    """A client for the Redis at `url`: a `RedisCluster` when that node is in cluster mode.

    `options` go to the client (timeouts, ``retry``). Raises `redis.exceptions.RedisError`
    or `OSError` when the node cannot be reached. `max_connections` bounds a single
    server's connection pool: a command waits for a free connection (at most its
    ``socket_timeout``) instead of opening one more (a cluster client keeps its own pools).
    """
    node = redis.asyncio.Redis.from_url(url, **options)
    try:
        clustered = await is_cluster(node)
    except BaseException:
        await node.aclose()
        raise
    if not clustered:
        if max_connections is None:
            return node
        await node.aclose()
        wait = options.get("socket_timeout") or 20.0
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=wait, **options
        )
        return redis.asyncio.Redis.from_pool(pool)
    await node.aclose()
    try:
        cluster = redis.asyncio.cluster.RedisCluster.from_url(_cluster_url(url), **options)
    except redis.exceptions.RedisClusterException as exc:  # e.g. a database other than 0
        raise redis.exceptions.RedisError(f"redis-url: {exc}") from exc
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return cluster


async def is_cluster(node: redis.asyncio.Redis) -> bool:
    """True when `node` answers ``INFO cluster`` with ``cluster_enabled:1``."""
    try:
        info = await node.info("cluster")
    except redis.exceptions.ResponseError:  # INFO renamed or refused: a managed single server
        return False
    return bool(int(info.get("cluster_enabled", 0)))


def _cluster_url(url: str) -> str:
    """The URL without a ``/0`` database: a cluster has only database 0, and says so loudly."""
    head, sep, tail = url.partition("?")
    if head.endswith("/0"):
        head = head[:-2]
    return head + sep + tail
