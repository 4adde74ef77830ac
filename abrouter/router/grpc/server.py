"""The grpc.aio server adapter (`--grpc-server grpcio`): any method, as raw bytes, to the assigned variant.

A generic handler takes every method (the router has no protos): one stream-stream
behaviour with identity (de)serialisers fits unary and all three streaming kinds, since
they share the wire format (a client's unary call is a stream of one message). Methods
whose protos make them unary (`wire.UNARY_METHODS`: the Open Inference Protocol's,
``ModelInfer`` first) take a unary handler and a unary upstream call instead: the same
bytes, about 1.5 times the calls per core in grpc.aio. One call is one `Exchange`, as an HTTP
request is:

- the head: ``POST`` and the full method path (``/inference.GRPCInferenceService/ModelInfer``)
  as the target, the call's text metadata as headers, so the unit comes from the metadata key
  named by ``unit.header`` (lower case), the override from ``x-ab-force-variant``, and the
  spec's ``exposures`` rules match the method path;
- the response's initial metadata is the upstream's plus ``x-ab-experiment``,
  ``x-ab-variant`` and ``x-ab-request-id`` (also when the call fails);
- messages are relayed one by one as they arrive, both ways, with the library's flow
  control as back-pressure; the upstream's code, details and trailing metadata pass
  through unchanged;
- the caller's deadline is the upstream call's (none: the experiment's ``timeouts.read``);
- the router's own failures are rendered by `wire.render`: an unreachable endpoint is
  UNAVAILABLE naming the variant (never the address), a deadline passed while the
  upstream had not finished is DEADLINE_EXCEEDED; both are errors of the variant, a
  caller's cancel is not (499).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from abrouter.router import exchange
from abrouter.router.errors import UpstreamTimeout, UpstreamUnavailable
from abrouter.router.exchange import Exchange, Failure, Incoming, Problem
from abrouter.router.grpc import oip, wire
from abrouter.router.grpc.upstream import Channels
from abrouter.router.matching import ModelAt
from abrouter.router.state import Router

log = logging.getLogger("abrouter.grpc")

_STATUS = {code.value[0]: code for code in grpc.StatusCode}

StreamBehaviour = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext[bytes, bytes]], Any]
UnaryBehaviour = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Any]
Call = grpc.aio.UnaryUnaryCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes]


class ProxyHandler(grpc.GenericRpcHandler):
    """Every method the server is asked for: proxied (see the module docstring)."""

    def __init__(self, router: Router, channels: Channels) -> None:
        self.router = router
        self.channels = channels
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            if method in wire.UNARY_METHODS:
                handler = grpc.unary_unary_rpc_method_handler(self._unary(method))
            else:
                handler = grpc.stream_stream_rpc_method_handler(self._stream(method))
            if len(self._handlers) >= 4096:  # bounded: callers choose the method names
                self._handlers.clear()
            self._handlers[method] = handler
        return handler

    def _stream(self, method: str) -> StreamBehaviour:
        async def behaviour(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
            await proxy_call(self.router, self.channels, method, requests, context)

        return behaviour

    def _unary(self, method: str) -> UnaryBehaviour:
        async def behaviour(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes | None:
            return await proxy_call(self.router, self.channels, method, request, context)

        return behaviour


async def proxy_call(
    router: Router,
    channels: Channels,
    method: str,
    request: bytes | AsyncIterator[bytes],
    context: grpc.aio.ServicerContext[bytes, bytes],
) -> bytes | None:
    """One call from its head to its exposure record: the reply of a unary call (None once it failed),
    or None for a stream, whose messages went out as they came."""
    metadata = tuple(context.invocation_metadata() or ())
    peer = wire.peer_ip(context.peer())
    incoming = Incoming("POST", method, wire.text_headers(metadata), peer, "http")
    first: bytes | None = None
    if not isinstance(request, bytes) and method == oip.STREAM_INFER:  # its first message names the model
        first = await anext(aiter(request), None)
    body, at = _model_of(method, request if first is None else first)
    try:
        ex = Exchange.start(router, incoming, now=time.time(), body=body, model_at=at)
    except exchange.Refused as refused:
        await _fail(context, refused.problem)
        return None
    call: Call | None = None
    deadline = math.inf
    try:
        address = ex.variant.grpc_upstream
        if address is None:
            await _fail(context, ex.failed(UpstreamUnavailable(f"variant {ex.variant.name!r} has no grpc_upstream")))
            return None
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None else ex.table.experiment.timeouts.read_s
        upstream_md = wire.upstream_metadata(metadata, client_ip=peer)
        deadline = time.monotonic() + timeout
        leg = _Leg(ex, context, deadline=deadline, connected=lambda: channels.connected(address))
        if isinstance(request, bytes):
            sent = request if ex.body is None else ex.body  # the variant's own model_name, if it has one
            call = unary = channels.unary(address, method)(sent, timeout=timeout, metadata=upstream_md)
            return await leg.unary(unary)
        if not isinstance(request, bytes) and first is not None:
            rename = (
                (at.name, ex.variant.model) if at is not None and ex.body is not None and ex.variant.model else None
            )
            request = _stream_from(ex.body or first, request, rename)
        call = streamed = channels.method(address, method)(request, timeout=timeout, metadata=upstream_md)
        await leg.stream(streamed)
        return None
    except asyncio.CancelledError:
        _cancelled(ex, timed_out=time.monotonic() >= deadline - wire.DEADLINE_SLACK_S)
        raise
    except Exception:
        ex.crashed()
        log.exception("bug while proxying the gRPC call %s", method[:200])
        await _fail(context, ex.problem(Failure.INTERNAL, "internal error in the router; see its log"))
        return None
    finally:
        if call is not None:
            call.cancel()  # a no-op once it ended; else the upstream learns the caller left
        ex.finish(now=time.time())


async def _stream_from(
    first: bytes, rest: AsyncIterator[bytes], rename: tuple[str | None, str] | None
) -> AsyncIterator[bytes]:
    """A ModelStreamInfer's messages: its first (read already), then the rest, each renamed as the first was."""
    yield first
    async for message in rest:
        yield oip.renamed(message, rename[0], rename[1]) if rename is not None and rename[0] else message


def _model_of(method: str, request: bytes | AsyncIterator[bytes]) -> tuple[bytes | None, ModelAt | None]:
    """An OIP inference request's model name, for matching and the per-arm rewrite (issue 16):
    a ModelInfer's, or a ModelStreamInfer's first message's (its later messages are renamed alike)."""
    if not isinstance(request, bytes) or method not in oip.INFER_METHODS:
        return None, None
    name = oip.model_name(request)
    return request, (ModelAt(name, "message", 0, 0) if name else None)


class _Leg:
    """The upstream call of one exchange, relayed to the caller's `context`."""

    __slots__ = ("connected", "context", "deadline", "ex", "sent_head")

    def __init__(
        self,
        ex: Exchange,
        context: grpc.aio.ServicerContext[bytes, bytes],
        *,
        deadline: float,
        connected: Callable[[], bool],
    ) -> None:
        self.ex, self.context, self.deadline, self.connected = ex, context, deadline, connected
        self.sent_head = False

    async def unary(self, call: grpc.aio.UnaryUnaryCall[bytes, bytes]) -> bytes | None:
        """The reply is awaited first: a whole answer needs no head of its own before it."""
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            await self._head(call)
            await self._failed(exc)
            return None
        await self._head(call)
        await self._end(wire.OK, "", await call.trailing_metadata())
        return reply

    async def stream(self, call: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        try:
            await self._head(call)
            async for message in call:
                await self.context.write(message)
            await self._end(_code(await call.code()), await call.details(), await call.trailing_metadata())
        except grpc.aio.AioRpcError as exc:
            await self._failed(exc)

    async def _head(self, call: Call) -> None:
        """The upstream's initial metadata and our tags, once the upstream sent its own.

        A call that failed before any response has none: its status decides (`_own_failure`).
        """
        head = await call.initial_metadata()
        if head or not call.done():
            await self.context.send_initial_metadata([*head, *wire.tags(self.ex.response_headers([]))])
            self.sent_head = True
            self.ex.first_byte()

    async def _failed(self, exc: grpc.aio.AioRpcError) -> None:
        code = _code(exc.code())
        timed_out = time.monotonic() >= self.deadline - wire.DEADLINE_SLACK_S
        problem = _own_failure(self.ex, code, sent_head=self.sent_head, connected=self.connected, timed_out=timed_out)
        if problem is not None:
            await _fail(self.context, problem)
        else:
            await self._end(code, exc.details() or "", exc.trailing_metadata())

    async def _end(self, code: int, details: str | None, trailing: grpc.aio.Metadata | None) -> None:
        """The upstream's status, details and trailing metadata, as they were; and the exchange's record."""
        ex, context = self.ex, self.context
        ex.received(wire.http_status(code), failed=wire.is_error(code))
        if not self.sent_head:
            await context.send_initial_metadata(wire.tags(ex.response_headers([])))
            self.sent_head = True
        if trailing:
            context.set_trailing_metadata(tuple(trailing))
        if code != wire.OK:
            context.set_code(_STATUS.get(code, grpc.StatusCode.UNKNOWN))
            context.set_details(details or "")


def _own_failure(
    ex: Exchange,
    code: int,
    *,
    sent_head: bool,
    connected: Callable[[], bool],
    timed_out: bool,
) -> Problem | None:
    """The router's failure to render in place of the upstream's status, or None to pass it through.

    UNAVAILABLE before any response while the channel holds no connection: the endpoint
    could not be reached (the library's details name its address; ours name the variant).
    DEADLINE_EXCEEDED once the upstream call's deadline passed: it did not finish in time.
    """
    if code == wire.UNAVAILABLE and not sent_head and not connected():
        return ex.failed(UpstreamUnavailable("the gRPC endpoint could not be reached"))
    if code == wire.DEADLINE_EXCEEDED and timed_out:
        return ex.failed(UpstreamTimeout("the call's deadline passed before the upstream finished"))
    return None


def _cancelled(ex: Exchange, *, timed_out: bool) -> None:
    """The call was cancelled: by its deadline (the upstream was too slow: an error of the
    variant), else by the caller (499, not an error)."""
    if timed_out:
        ex.failed(UpstreamTimeout("the call's deadline passed before the upstream finished"))
    else:
        ex.client_gone()


def _code(status: grpc.StatusCode) -> int:
    return int(status.value[0])


async def _fail(context: grpc.aio.ServicerContext[bytes, bytes], problem: Problem) -> None:
    """Answer the call with the router's own failure: tags in the initial metadata, then the status."""
    code, details, tags = wire.render(problem)
    try:
        await context.send_initial_metadata(tags)
    except Exception:  # the head went out already (a failure after the upstream's): the status still can
        log.debug("initial metadata already sent", exc_info=True)
    context.set_code(_STATUS[code])
    context.set_details(details)
