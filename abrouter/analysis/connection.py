"""The analyzer's Redis client, built at the first look that reaches Redis.

`abrouter.redisclient.connect` has to talk to a node to learn whether it is a Redis
Cluster, so a Redis that is down when ``analyze --every`` starts must be one failed look
(exit code 1 for a single look), not a crash: the client is built on first use.

Every command and connection attempt waits at most `timeout_s` (``--redis-timeout``): a
Redis that accepts connections but stops answering (paused, swapping, a stuck proxy)
is a failed look or a failed report naming the timeout, never a command that hangs.
"""

from __future__ import annotations

import redis.exceptions

from abrouter import redisclient
from abrouter.analysis.commands import REDIS_TIMEOUT_S
from abrouter.analysis.errors import SourceError


class RedisConnection:
    """One client per process, connected lazily; see the module docstring."""

    def __init__(self, url: str, timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client: redisclient.Client | None = None

    async def client(self, experiment: str) -> redisclient.Client:
        """The client; `SourceError` (naming `experiment`) when Redis cannot be reached."""
        if self._client is None:
            try:
                self._client = await redisclient.connect(
                    self.url, socket_connect_timeout=self.timeout_s, socket_timeout=self.timeout_s
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                raise SourceError(f"cannot read experiment {experiment!r} from Redis: {exc}") from exc
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
