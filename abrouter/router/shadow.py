"""[shadow] Shadow traffic: copies of the control's requests, replayed to shadow variants off the live path.

A variant with ``shadow: true`` never answers a client and is never assigned (weight 0).
The stream driver (`abrouter.router.stream`) asks `wanted` which shadows a request is
for: only requests the control served, that are exposures, not forced, for a unit in the
shadow's `Variant.shadow_percent` share (by a hash of the unit and the shadow's name, so
a unit's requests are all copied or none; a request without a unit id is drawn alone).
Once the client has its whole answer, the driver hands a `Copy` to the `ShadowPool`:
`offer` never waits (a full queue drops the copy and counts it), and a few worker tasks
send it to each shadow's upstream, the request bytes as the control got them, with
``X-AB-Shadow: 1``. A request whose body streamed (over `stream.BUFFER_LIMIT`, or unsized)
is not copied: its bytes went to the control as they came and were not kept (counted,
``streamed_body``).

Each reply is recorded in the event log as two exposures (`abrouter.contract.keys`,
docs/storage.md): in the stratum ``<shadow>~shadow`` with the shadow's status, latency
(from sending the copy to the end of the reply) and error, and in ``<shadow>~agree`` an
error when the shadow's status or body differs from the control's (bodies are compared by
BLAKE2b digests taken as each body goes by; nothing is buffered). Both under units derived
from the live unit (`keys.shadow_unit`). The analyzer reports them as the shadow's arm.

No framework and no I/O library: asyncio and the `Transport` seam only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass

from abrouter.contract import keys
from abrouter.contract.model import Variant
from abrouter.router import headers as hdr
from abrouter.router.errors import UpstreamError, UpstreamTimeout
from abrouter.router.eventlog.events import Exposure
from abrouter.router.exchange import Exchange, ExposureLog, Incoming
from abrouter.router.matching import ModelAt, renamed
from abrouter.router.metrics import ProxyMetrics
from abrouter.router.upstream.transport import Transport

log = logging.getLogger("abrouter.shadow")

#: Marks a copy for the shadow's model server (e.g. to skip side effects of a prediction).
SHADOW_HEADER = "X-AB-Shadow"
#: Copies waiting for a worker at most; beyond, new copies are dropped (and counted).
QUEUE_SIZE = 1024
#: Request bytes the waiting copies may hold at most (a body is up to 256 KiB): beyond, dropped too.
QUEUE_BYTES = 32 * 1024 * 1024
#: Copies in flight at once per process: a slow shadow fills the queue, never the live path.
WORKERS = 8
_SCALE = 100.0 / 2**64


def digest() -> hashlib.blake2b:
    """A fresh hash of a response body; the live and the shadow's are compared by it."""
    return hashlib.blake2b(digest_size=16)


def share(unit_hash: str, shadow: str) -> float:
    """Where a unit falls for a shadow, uniform in [0, 100): copied when below its `shadow_percent`."""
    h = hashlib.blake2b(f"{unit_hash}{keys.FIELD_SEP}{shadow}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") * _SCALE


def wanted(ex: Exchange) -> tuple[Variant, ...]:
    """The shadows this request is copied to: none unless the control served it as an exposure."""
    e = ex.table.experiment
    if not e.shadows or ex.choice.index != 0 or ex.choice.forced:
        return ()
    if not ex.table.exposures.decide(ex.incoming.method, ex.incoming.target):
        return ()
    return tuple(v for v in e.shadows if share(ex.choice.unit_hash, v.name) < v.shadow_percent)


@dataclass(frozen=True, slots=True)
class Copy:
    """An answered live request to replay, and what the control answered."""

    shadows: tuple[Variant, ...]
    #: The request as the client sent it (before the control's model name, if any).
    incoming: Incoming
    body: bytes | None
    #: Where the request names its model, for each shadow's own `Variant.model`.
    model_at: ModelAt | None
    request_id: str
    unit_hash: str
    anonymous: bool
    epoch: int
    #: The control's status and the digest of its body.
    status: int
    digest: bytes

    @classmethod
    def of(cls, ex: Exchange, shadows: tuple[Variant, ...], body: bytes | None, live_digest: bytes) -> Copy:
        return cls(shadows=shadows, incoming=ex.request, body=body, model_at=ex.model_at, request_id=ex.request_id,
                   unit_hash=ex.choice.unit_hash, anonymous=ex.choice.anonymous, epoch=ex.table.epoch,
                   status=ex.status, digest=live_digest)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Reply:
    """What a shadow answered to one copy."""

    status: int
    error: bool
    digest: bytes | None
    latency_ms: float


class ShadowPool:
    """A bounded queue of copies and the worker tasks that send them; one per experiment served."""

    def __init__(
        self, *, experiment: str, transport: Transport, eventlog: ExposureLog, metrics: ProxyMetrics,
        size: int = QUEUE_SIZE, max_bytes: int = QUEUE_BYTES, workers: int = WORKERS,
    ) -> None:  # fmt: skip
        self._experiment = experiment
        self._transport, self._eventlog, self._metrics = transport, eventlog, metrics
        self._queue: asyncio.Queue[Copy] = asyncio.Queue(size)
        self._bytes, self._max_bytes = 0, max_bytes
        self._size = workers
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"abrouter-shadow-{i}") for i in range(self._size)]

    def offer(self, copy: Copy) -> None:
        """Queue a copy without waiting; a full queue (copies or bytes) drops it (counted, ``queue_full``)."""
        size = len(copy.body or b"")
        if self._bytes + size > self._max_bytes or self._queue.full():
            self.dropped("queue_full", len(copy.shadows))
            return
        self._queue.put_nowait(copy)
        self._bytes += size

    def dropped(self, reason: str, n: int = 1) -> None:
        self._metrics.shadow_dropped[(self._experiment, reason)] += n

    async def close(self) -> None:
        """Stop the workers; copies in flight or still queued are dropped (counted, ``closing``)."""
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        while not self._queue.empty():
            self.dropped("closing", len(self._queue.get_nowait().shadows))

    async def _work(self) -> None:
        while True:
            copy = await self._queue.get()
            self._bytes -= len(copy.body or b"")
            for i, shadow in enumerate(copy.shadows):
                try:
                    self._record(copy, shadow, await self._send(copy, shadow))
                except asyncio.CancelledError:  # the router stops: this copy's unsent replies are counted
                    self.dropped("closing", len(copy.shadows) - i)
                    raise
                except Exception:  # a bug: logged, and the worker goes on
                    log.exception("bug while sending a copy to shadow %s", shadow.name)

    async def _send(self, copy: Copy, shadow: Variant) -> Reply:
        started = time.perf_counter()
        headers = hdr.upstream_request_headers(
            copy.incoming.headers, upstream=shadow.upstream, client_ip=copy.incoming.peer, scheme=copy.incoming.scheme
        )
        target, rewritten = renamed(copy.incoming.target, copy.body, copy.model_at, shadow.model)  # its own name
        if rewritten is not None:  # rewritten: its length is the transport's to state
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        try:
            upstream = await self._transport.request(
                base_url=shadow.upstream, method=copy.incoming.method, path_qs=target,
                headers=[*headers, (SHADOW_HEADER, "1")], body=copy.body if rewritten is None else rewritten,
            )  # fmt: skip
            try:
                body = digest()
                if copy.incoming.method != "HEAD" and upstream.status not in (204, 304):
                    async for chunk in upstream.chunks():
                        body.update(chunk)
            finally:
                upstream.release()
        except UpstreamError as exc:
            log.debug("shadow %s: no reply: %s", shadow.name, exc)
            status = 504 if isinstance(exc, UpstreamTimeout) else 502
            return Reply(status=status, error=True, digest=None, latency_ms=_ms_since(started))
        error = upstream.status >= 500
        return Reply(status=upstream.status, error=error, digest=body.digest(), latency_ms=_ms_since(started))

    def _record(self, copy: Copy, shadow: Variant, reply: Reply) -> None:
        agreed = not reply.error and reply.status == copy.status and reply.digest == copy.digest
        counts = self._metrics.shadow
        arm = (self._experiment, shadow.name)
        counts[(*arm, "sent")] += 1
        counts[(*arm, "failed")] += reply.error
        counts[(*arm, "agreed")] += agreed
        now = time.time()
        for suffix, error, latency_ms in (
            (keys.SHADOW_SUFFIX, reply.error, reply.latency_ms),
            (keys.AGREEMENT_SUFFIX, not agreed, 0.0),
        ):
            stratum = shadow.name + suffix
            self._eventlog.record_exposure(
                Exposure(
                    request_id=copy.request_id,
                    unit_hash=keys.shadow_unit(copy.unit_hash, stratum),
                    variant=stratum,
                    epoch=copy.epoch,
                    ts=now,
                    status=reply.status,
                    latency_ms=latency_ms,
                    error=error,
                    anonymous=copy.anonymous,
                )
            )


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
