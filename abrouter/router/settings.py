"""`ServeSettings`: how one router process runs, and the shared secret's checks.

Secrets never reach a repr or a log line: the repr masks the Redis URL's password and
leaves the secret out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from abrouter.redact import mask_url
from abrouter.router.connections import Limits

#: The value k8s/base/kustomization.yaml ships with, to be replaced before any real deployment.
PLACEHOLDER_SECRET = b"replace-me-with-openssl-rand-hex-32"


@dataclass(frozen=True)
class ServeSettings:
    redis_url: str
    spill_dir: Path
    #: Seconds between event-log flushes to Redis.
    flush_interval_s: float = 0.25
    #: Events held in memory before a flush is forced.
    max_buffered_events: int = 50_000
    #: Over how many hash tags (Redis Cluster slots) a *new* experiment's per-unit state
    #: and sums are spread; None: 1 on a single server, `keys.CLUSTER_SHARDS` on a cluster.
    #: An experiment already in Redis keeps the count stored with it (`Keys.layout`).
    shards: int | None = None
    #: Shared by all replicas so any of them accepts request ids issued by another;
    #: from ABROUTER_SECRET. Without it ids are checked for integrity only.
    secret: bytes = field(default=b"", repr=False)
    #: False runs a plain proxy that records nothing (to measure the event log's cost).
    event_log: bool = True
    #: The upstream client: "httptools" (`HttptoolsTransport`, abrouter's own keep-alive
    #: client, the default) or "aiohttp" (`AiohttpTransport`, aiohttp's ClientSession).
    upstream_transport: Literal["aiohttp", "httptools"] = "httptools"
    #: From ABROUTER_API_TOKEN: when set, POST /abrouter/outcomes and GET /abrouter/experiment
    #: need ``Authorization: Bearer <token>`` (compared in constant time, never logged).
    api_token: bytes = field(default=b"", repr=False)
    #: Client deadlines (header, body idle, keep-alive idle) and the connection cap of the
    #: listener (`abrouter.router.http.listener`).
    client_limits: Limits = field(default_factory=Limits)

    def __repr__(self) -> str:
        return (
            f"ServeSettings(redis_url={mask_url(self.redis_url)!r}, spill_dir={str(self.spill_dir)!r}, "
            f"flush_interval_s={self.flush_interval_s}, max_buffered_events={self.max_buffered_events}, "
            f"shards={self.shards}, "
            f"secret={'set' if self.secret else 'unset'}, event_log={self.event_log}, "
            f"upstream_transport={self.upstream_transport!r}, client_limits={self.client_limits!r})"
        )


def api_token_from_env() -> bytes:
    return os.environ.get("ABROUTER_API_TOKEN", "").strip().encode()


def secret_from_env() -> bytes:
    return os.environ.get("ABROUTER_SECRET", "").encode()


def secret_problem(secret: bytes) -> str | None:
    """Why request ids could be forged with this secret, or None."""
    advice = (
        "anyone can forge request ids and credit outcomes to a variant; set it to the same random "
        "value on every replica (e.g. openssl rand -hex 32)"
    )
    if not secret:
        return f"ABROUTER_SECRET is not set: {advice}"
    if secret == PLACEHOLDER_SECRET:
        return f"ABROUTER_SECRET is the placeholder from k8s/base/kustomization.yaml: {advice}"
    return None
