"""The router's listening socket: aiohttp's server with client deadlines and a connection cap.

aiohttp's server has a keep-alive timer but no deadline for reading a request's headers
or body, and no limit on open connections. `start` serves an app the way
``web.run_app`` does, but with its own protocol factory: beyond the cap a connection gets
a 503 and is closed at once; every other connection is a `_GuardedHandler`, aiohttp's
`RequestHandler` reporting its parser's events to a `connections.ConnectionClock`, and
one sweeper task per listener closes those past their deadline (`abrouter.router.connections`
says which deadline holds when). `run` is ``web.run_app`` for ``abrouter serve``: SIGTERM
and SIGINT stop accepting, drain in-flight requests, then run the app's cleanups.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from abrouter.router.connections import ConnectionClock, ConnectionGuard, Limits

log = logging.getLogger("abrouter.listener")

#: The listener's guard, for /abrouter/metrics (absent when the app runs on another server).
CONNECTIONS = web.AppKey("connections", ConnectionGuard)

#: What a connection beyond the cap receives before it is closed.
_REFUSAL_BODY = b'{"error":"the router has too many open connections","code":"too_many_connections"}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler, telling its clock what the parser saw."""

    def __init__(self, manager: Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._clock = ConnectionClock(guard.limits, since=self._loop.time())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._clock.since = self._loop.time()
        self._guard.opened(self._clock, self.force_close)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.closed(self._clock)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        if data:  # aiohttp calls this with b"" to re-parse what it buffered
            self._clock.received(now)
        # `_messages` is aiohttp's queue of parsed requests (private; checked by
        # tests/router/http/test_listener.py, which fails loudly if it goes away).
        queued = len(self._messages)
        super().data_received(data)
        # The parser emits a message once its headers are complete; its payload says when
        # the body is (at once for a request without one).
        for _, payload in itertools.islice(self._messages, queued, None):
            self._clock.headers_complete(now)
            payload.on_eof(self._clock.body_complete)

    def pause_reading(self) -> None:
        super().pause_reading()
        self._clock.pause()

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._clock.resume(self._loop.time())
        super().resume_reading(resume_parser)

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._clock.response_done(self._loop.time())


class _Refused(asyncio.Protocol):
    """A connection beyond the cap: a 503 and the door."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(REFUSAL)
        transport.close()


class _GuardedSite(web.BaseSite):
    """A TCP site whose protocol factory goes through the guard."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, guard: ConnectionGuard, **handler: Any) -> None:
        super().__init__(runner)
        self._host, self._port, self._guard, self._handler = host, port, guard, handler

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            if not self._guard.admit():
                return _Refused()
            return _GuardedHandler(server, guard=self._guard, loop=loop, **self._handler)

        self._server = await loop.create_server(protocol, self._host, self._port, backlog=1024)
        self._port = self._server.sockets[0].getsockname()[1]


@dataclass
class Listener:
    runner: web.AppRunner
    guard: ConnectionGuard
    port: int
    _sweeper: asyncio.Task[None]

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish, run the app's cleanups."""
        try:
            await self.runner.cleanup()  # the sweeper still runs: a stalled client cannot hold the drain
        finally:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


async def start(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: Limits,
    shutdown_timeout: float = 30.0,
    handle_signals: bool = False,
    **handler: Any,
) -> Listener:
    """Serve `app` on host:port (0: any free port). `handler` goes to aiohttp's RequestHandler."""
    guard = ConnectionGuard(limits)
    app[CONNECTIONS] = guard
    runner = web.AppRunner(app, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    # aiohttp's own keep-alive timer stays as a backstop, later than the guard's idle deadline.
    handler = {"access_log": None, "keepalive_timeout": 2 * limits.idle_s, **handler}
    site = _GuardedSite(runner, host, port, guard=guard, **handler)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    sweeper = asyncio.create_task(_sweep(guard), name="abrouter-connection-sweeper")
    return Listener(runner=runner, guard=guard, port=site._port, _sweeper=sweeper)


async def _sweep(guard: ConnectionGuard) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(guard.limits.sweep_interval_s)
        try:
            guard.sweep(loop.time())
        except Exception:  # a bug here must not leave every later connection unguarded
            log.exception("connection sweeper failed")


def run(app: web.Application, *, loop: asyncio.AbstractEventLoop, **options: Any) -> None:
    """``web.run_app`` with the guarded listener; `options` are `start`'s keywords."""

    async def main() -> None:
        listener = await start(app, handle_signals=True, **options)
        try:
            await asyncio.Event().wait()
        finally:
            await listener.close()

    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):  # SIGTERM, SIGINT: drain below
        pass
    finally:
        try:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(task)
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
