"""One router process, from start to drain: the runtime, its listener, and the signals.

``run`` is what ``abrouter serve`` (and each of its ``--workers``) executes: it opens the
runtime (`abrouter.router.runtime.running`), listens (HTTP/1.1, and gRPC with a
`Plan.grpc_port`), and on SIGTERM or SIGINT stops accepting, lets in-flight requests and
calls finish (up to `shutdown_timeout_s`), then leaves the runtime, whose event log makes
its final flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from abrouter.contract.experiment import Experiment
from abrouter.router import workerfiles
from abrouter.router.http import listener
from abrouter.router.runtime import running
from abrouter.router.settings import ServeSettings
from abrouter.router.sources.base import SpecSource
from abrouter.router.state import Router
from abrouter.router.workers import WorkerSlot

if TYPE_CHECKING:  # the Kubernetes client only under --experiments NAMESPACE
    from abrouter.router.grpc.h2server import OwnGrpcListener
    from abrouter.router.grpc.listener import GrpcListener
    from abrouter.router.sources.catalog import CatalogSource


@dataclass
class Plan:
    """What one router process serves, and where."""

    #: The experiments served from the start (under `catalog`, possibly none).
    experiments: list[Experiment]
    settings: ServeSettings
    #: Experiment name -> where its spec changes come from.
    sources: dict[str, SpecSource] = field(default_factory=dict)
    #: ``--experiments NAMESPACE``: every Experiment of a namespace, added and deleted live.
    catalog: CatalogSource | None = None
    host: str = "127.0.0.1"
    port: int = 0
    #: A socket already bound (and listening) by a supervisor; host and port are then unused.
    sock: socket.socket | None = None
    shutdown_timeout_s: float = 30.0
    #: Long-lived helpers started before the listener and stopped after it (the example models).
    companions: list[Callable[[], AbstractAsyncContextManager[object]]] = field(default_factory=list)
    #: One of `abrouter serve --workers N` (N > 1): it publishes its counters for the others.
    worker: WorkerSlot | None = None
    #: The gRPC listener's port on `host` (`abrouter serve --grpc-port`); None: no gRPC listener.
    #: Every worker binds it (SO_REUSEPORT, gRPC's default): the kernel spreads the connections.
    grpc_port: int | None = None
    #: Which gRPC server: ``own`` (our HTTP/2, `abrouter.router.grpc.h2server`) or ``grpcio`` (grpc.aio).
    grpc_server: str = "own"


@contextlib.asynccontextmanager
async def serving(plan: Plan) -> AsyncIterator[tuple[Router, listener.Listener]]:
    """The router listening; on exit, drained, then closed and flushed."""
    async with contextlib.AsyncExitStack() as stack:
        for companion in plan.companions:
            await stack.enter_async_context(companion())
        router = await stack.enter_async_context(
            running(plan.experiments, plan.settings, sources=plan.sources, catalog=plan.catalog)
        )
        if (slot := plan.worker) is not None:
            router.workers = slot
            # Entered before the listener: its last snapshot is written after the drain.
            await stack.enter_async_context(
                workerfiles.publishing(slot, lambda now: workerfiles.snapshot_of(router, slot, now))
            )
        server = await listener.start(router, host=plan.host, port=plan.port, sock=plan.sock)
        grpc_server: GrpcListener | OwnGrpcListener | None = None
        try:
            if plan.grpc_port is not None:
                grpc_server = await _start_grpc(router, plan.host, plan.grpc_port, plan.grpc_server)
            yield router, server
        finally:
            closing = [server.close(plan.shutdown_timeout_s)]
            if grpc_server is not None:
                closing.append(grpc_server.close(plan.shutdown_timeout_s))
            await asyncio.gather(*closing)


async def _start_grpc(router: Router, host: str, port: int, server: str) -> GrpcListener | OwnGrpcListener:
    if server == "own":
        from abrouter.router.grpc import h2server

        return await h2server.start(router, host=host, port=port)
    # Imported here: grpc's import costs a process that serves no gRPC some 20 MiB.
    from abrouter.router.grpc import listener as grpc_listener

    return await grpc_listener.start(router, host=host, port=port)


async def serve_until_signalled(plan: Plan, *, on_listening: Callable[[int], None] | None = None) -> None:
    """Serve `plan` until SIGTERM or SIGINT, then drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with serving(plan) as (_, server):
            settle_heap()
            if on_listening is not None:
                on_listening(server.port)
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


#: The collector's youngest generation is collected every this many allocations (Python's default: 700).
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Move everything alive after start-up (modules, the spec, the runtime) out of the cyclic
    garbage collector's sight (`gc.freeze`, as uWSGI and Instagram do): the full collections
    that otherwise walk it every few seconds under load stalled every request in flight (p99
    at saturation 130-170 ms before, 35-37 ms after, bench/README.md).

    Then the youngest generation is collected every `YOUNG_THRESHOLD` allocations, not 700:
    each collection walks what the requests in flight hold, and promotes it to be walked again
    by the older ones, so at saturation a fourteenth as many collections did the same for ~9% more
    gRPC calls per core (bench/README.md); the garbage cycles a request may leave wait a little longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when installed (about twice the throughput), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # uvloop is an optional speed-up
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(plan: Plan, *, on_listening: Callable[[int], None] | None = None) -> None:
    """`serve_until_signalled` on a new event loop, in this process."""
    loop = new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve_until_signalled(plan, on_listening=on_listening))
    finally:
        try:
            _cancel_rest(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_rest(loop: asyncio.AbstractEventLoop) -> None:
    rest = asyncio.all_tasks(loop)
    for task in rest:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
