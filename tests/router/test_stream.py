"""The stream driver on its own, without sockets: what the client gets and what is recorded.

The upstream is a `ScriptedTransport` (an implementation of the `Transport` protocol that
answers as told) and the client a `RecordingDownstream` (an implementation of the
driver's `Downstream` that keeps what it was sent); the driver, the exchange, the
metrics and the exposure records are the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from abrouter.contract import experiment as model
from abrouter.router import stream
from abrouter.router.errors import UpstreamTimeout, UpstreamUnavailable
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.eventlog.events import Exposure
from abrouter.router.exchange import Failure, Incoming, Problem
from abrouter.router.routing import RoutingTable
from abrouter.router.state import Lane, Lanes, Router, request_ids

SPEC = {
    "name": "driver",
    "unit": {"header": "X-User-Id"},
    "variants": [
        {"name": "control", "upstream": "http://up:1", "weight": 100},
        {"name": "candidate", "upstream": "http://up:2", "weight": 0},
    ],
    "allow_force_variant": True,
}


class RecordingLog(DisabledEventLog):
    def __init__(self) -> None:
        self.exposures: list[Exposure] = []

    def record_exposure(self, e: Exposure) -> None:
        self.exposures.append(e)


@dataclass
class Answer:
    status: int = 200
    body: list[bytes] = field(default_factory=lambda: [b'{"ok": true}'])
    length: int | None = -1  # -1: the body's length
    fail_after: int | None = None  # chunks sent before the upstream fails mid-body
    bug: bool = False  # at `fail_after`, a bug (KeyError) instead of an upstream failure
    reason: str = "OK"
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("Content-Type", "application/json")])


class ScriptedResponse:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.status, self.reason, self.headers = answer.status, answer.reason, answer.headers
        total = sum(map(len, answer.body))
        self.content_length = total if answer.length == -1 else answer.length
        self.released = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.answer.body):
            if self.answer.fail_after is not None and i >= self.answer.fail_after:
                raise KeyError("a bug") if self.answer.bug else UpstreamUnavailable("reset mid-response")
            yield chunk

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def release(self) -> None:
        self.released = True


class ScriptedTransport:
    def __init__(self, answer: Answer | Exception) -> None:
        self.answer = answer
        self.sent: list[bytes] = []
        self.responses: list[ScriptedResponse] = []

    async def request(
        self, *, base_url: str, method: str, path_qs: str, headers: Any, body: bytes | AsyncIterable[bytes] | None
    ) -> ScriptedResponse:
        if isinstance(body, (bytes, bytearray)):
            self.sent.append(bytes(body))
        elif body is not None:
            self.sent.append(b"".join([c async for c in body]))
        if isinstance(self.answer, Exception):
            raise self.answer
        response = ScriptedResponse(self.answer)
        self.responses.append(response)
        return response

    def set_timeouts(self, timeouts: Any) -> None:
        pass

    async def close(self) -> None:
        pass


class RecordingDownstream:
    def __init__(self, *, gone_after: int | None = None) -> None:
        self.started = False
        self.events: list[tuple[Any, ...]] = []
        self.gone_after = gone_after

    def respond(self, status: int, reason: str, headers: Any, body: bytes, *, bodiless: bool = False) -> None:
        self.started = True
        self.events.append(("respond", status, body, bodiless))

    def start(self, status: int, reason: str, headers: Any) -> None:
        self.started = True
        self.events.append(("start", status))

    async def send(self, chunk: bytes) -> None:
        if self.gone_after is not None and sum(e[0] == "send" for e in self.events) >= self.gone_after:
            raise stream.ClientGone("the client left")
        self.events.append(("send", chunk))

    def end(self) -> None:
        self.events.append(("end",))

    def abort(self) -> None:
        self.events.append(("abort",))

    def fail(self, problem: Problem) -> None:
        self.started = True
        self.events.append(("fail", problem.failure))


def make_router(answer: Answer | Exception) -> tuple[Router, RecordingLog, ScriptedTransport]:
    experiment = model.parse(SPEC)
    log, transport = RecordingLog(), ScriptedTransport(answer)
    lane = Lane(
        table=RoutingTable(experiment=experiment, since=time.time()),
        eventlog=log,  # type: ignore[arg-type]  # records what the driver logs
        ids=request_ids(b"", experiment),
        transport=transport,
    )
    router = Router(lanes=Lanes([lane]))
    return router, log, transport


def incoming(method: str = "POST", target: str = "/predict", **headers: str) -> Incoming:
    return Incoming(method, target, [("X-User-Id", "u1"), *headers.items()], "127.0.0.1", "http")


Ran = tuple[RecordingDownstream, Router, RecordingLog, ScriptedTransport]


async def run(
    answer: Answer | Exception,
    body: stream.RequestBody = b"{}",
    down: RecordingDownstream | None = None,
    req: Incoming | None = None,
) -> Ran:
    router, log, transport = make_router(answer)
    down = down or RecordingDownstream()
    await stream.proxy(router, req or incoming(), body, down)
    return down, router, log, transport


async def served(
    answer: Answer | Exception,
    body: bytes | None = b"{}",
    down: RecordingDownstream | None = None,
    req: Incoming | None = None,
) -> Ran:
    """As `run`, through `stream.serve` (the callback path of a body held whole): it returns at once; this
    waits for the exchange's end."""
    router, log, transport = make_router(answer)
    down = down or RecordingDownstream()
    await settled(stream.serve(router, req or incoming(), body, down))
    return down, router, log, transport


async def settled(whole: stream.Whole | None) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while whole is not None and not whole.done:
        assert asyncio.get_running_loop().time() < deadline, "the exchange never ended"
        await asyncio.sleep(0.001)


Entry = Callable[..., Awaitable[Ran]]
#: The driver's two entries: `proxy` (any body, a coroutine) and `serve` (a body held whole, callbacks).
ENTRIES = pytest.mark.parametrize("entry", [run, served], ids=["proxy", "serve"])


@ENTRIES
async def test_a_small_response_goes_out_whole_and_is_one_exposure(entry: Entry) -> None:
    down, router, log, transport = await entry(Answer())
    assert down.events == [("respond", 200, b'{"ok": true}', False)]
    assert transport.sent == [b"{}"] and transport.responses[0].released
    (e,) = log.exposures
    assert (e.status, e.error, e.variant) == (200, False, "control")
    assert router.metrics.first_byte[("driver", "control")].n == 1 and not router.metrics.errors


@ENTRIES
async def test_a_large_or_unsized_response_streams_and_ends(entry: Entry) -> None:
    chunks = [b"x" * 100_000] * 4
    down, router, log, _ = await entry(Answer(body=chunks, length=None))
    assert down.events == [("start", 200), *[("send", c) for c in chunks], ("end",)]
    assert log.exposures[0].status == 200 and not router.metrics.errors


@ENTRIES
@pytest.mark.parametrize(("req", "status"), [(incoming("HEAD"), 200), (incoming(), 204), (incoming(), 304)])
async def test_head_204_and_304_are_bodiless(entry: Entry, req: Incoming, status: int) -> None:
    down, *_ = await entry(Answer(status=status, body=[]), req=req)
    assert down.events == [("respond", status, b"", True)]


@pytest.mark.parametrize(
    ("error", "failure", "status"),
    [
        (UpstreamUnavailable("refused"), Failure.UPSTREAM_UNAVAILABLE, 502),
        (UpstreamTimeout("slow"), Failure.UPSTREAM_TIMEOUT, 504),
    ],
)
@ENTRIES
async def test_no_response_is_a_neutral_failure_and_an_error_of_the_variant(
    entry: Entry, error: Exception, failure: Failure, status: int
) -> None:
    down, router, log, _ = await entry(error)
    assert down.events == [("fail", failure)]
    (e,) = log.exposures
    assert e.status == status and e.error
    assert sum(router.metrics.errors.values()) == 1


@ENTRIES
async def test_an_upstream_that_fails_mid_stream_cuts_the_client_and_is_an_error(entry: Entry) -> None:
    down, router, log, transport = await entry(Answer(body=[b"a" * 300_000, b"b"], length=None, fail_after=1))
    assert down.events == [("start", 200), ("send", b"a" * 300_000), ("abort",)]
    assert log.exposures[0].error and router.metrics.errors[("driver", "control", "stream_aborted")] == 1
    assert transport.responses[0].released


async def test_a_client_gone_is_recorded_as_499_with_the_request_counted() -> None:
    router, log, transport = make_router(Answer(body=[b"a" * 300_000] * 3, length=None))
    with pytest.raises(stream.ClientGone):
        await stream.proxy(router, incoming(), b"{}", RecordingDownstream(gone_after=1))
    (e,) = log.exposures
    assert e.status == 499 and not e.error
    assert router.metrics.requests[("driver", "control", "4xx")] == 1 and not router.metrics.errors
    assert transport.responses[0].released


async def test_a_cancelled_exchange_waiting_for_the_upstream_is_a_499() -> None:
    router, log, _ = make_router(Answer())
    gate = asyncio.Event()

    async def never(**_: Any) -> Any:
        await gate.wait()

    router.lane("driver").transport.request = never  # type: ignore[method-assign]
    task = asyncio.ensure_future(stream.proxy(router, incoming(), b"{}", RecordingDownstream()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (e,) = log.exposures
    assert e.status == 499 and not e.error


async def test_a_body_cut_by_the_client_is_neither_an_exposure_nor_an_error() -> None:
    paused: list[str] = []
    body = stream.BodyStream(pause=lambda: paused.append("pause"), resume=lambda: paused.append("resume"))
    body.feed(b"x" * 10)
    body.cut()
    router, log, _ = make_router(Answer())
    with pytest.raises(stream.ClientGone):
        await stream.proxy(router, incoming(), body, RecordingDownstream())
    assert log.exposures == [] and not router.metrics.errors and not router.metrics.requests


async def test_a_body_stream_pauses_the_client_above_its_high_water_and_resumes_when_read() -> None:
    paused: list[str] = []
    body = stream.BodyStream(lambda: paused.append("pause"), lambda: paused.append("resume"), high_water=10)
    body.feed(b"x" * 6)
    assert paused == []
    body.feed(b"x" * 6)
    assert paused == ["pause"]
    body.end()
    assert [c async for c in body] == [b"x" * 12] and paused == ["pause", "resume"]


@ENTRIES
async def test_a_refused_request_is_rendered_and_never_recorded(entry: Entry) -> None:
    req = incoming(**{"X-AB-Force-Variant": "nope"})
    down, router, log, transport = await entry(Answer(), req=req)
    assert down.events == [("fail", Failure.UNKNOWN_VARIANT)]
    assert log.exposures == [] and transport.sent == [] and not router.metrics.requests
    down, *_ = await entry(Answer(), req=incoming(target="ftp://x/y"))
    assert down.events == [("fail", Failure.BAD_TARGET)]


async def test_a_bug_is_a_500_before_the_head_and_an_abort_after() -> None:
    router, log, _ = make_router(Answer())

    async def broken(**_: Any) -> Any:
        raise KeyError("a bug")

    router.lane("driver").transport.request = broken  # type: ignore[method-assign]
    down = RecordingDownstream()
    await stream.proxy(router, incoming(), b"{}", down)
    assert down.events == [("fail", Failure.INTERNAL)]
    assert log.exposures[0].status == 500 and log.exposures[0].error
    down, _, log, _ = await run(Answer(body=[b"a" * 300_000, b"b"], length=None, fail_after=1, bug=True))
    assert down.events == [("start", 200), ("send", b"a" * 300_000), ("abort",)]
    assert log.exposures[0].status == 500 and log.exposures[0].error


async def test_serve_a_client_gone_mid_stream_is_a_499_its_response_cut_and_released() -> None:
    chunks = [b"a" * 300_000] * 3
    down, router, log, transport = await served(
        Answer(body=chunks, length=None), down=RecordingDownstream(gone_after=1)
    )
    assert down.events == [("start", 200), ("send", chunks[0]), ("abort",)]
    (e,) = log.exposures
    assert e.status == 499 and not e.error and not router.metrics.errors
    assert transport.responses[0].released


async def test_serve_a_client_gone_while_the_upstream_is_waited_for_is_a_499() -> None:
    router, log, _ = make_router(Answer())
    gate = asyncio.Event()

    async def never(**_: Any) -> Any:
        await gate.wait()

    router.lane("driver").transport.request = never  # type: ignore[method-assign]
    down = RecordingDownstream()
    whole = stream.serve(router, incoming(), b"{}", down)
    assert whole is not None
    await asyncio.sleep(0.01)
    whole.client_gone()
    await settled(whole)
    (e,) = log.exposures
    assert e.status == 499 and not e.error and down.events == []
    whole.client_gone()  # twice (the connection's loss after the adapter's own): still one record
    assert len(log.exposures) == 1


async def test_serve_a_bug_is_a_500_before_the_head_and_an_abort_after() -> None:
    router, log, _ = make_router(Answer())

    async def broken(**_: Any) -> Any:
        raise KeyError("a bug")

    router.lane("driver").transport.request = broken  # type: ignore[method-assign]
    down = RecordingDownstream()
    await settled(stream.serve(router, incoming(), b"{}", down))
    assert down.events == [("fail", Failure.INTERNAL)]
    assert log.exposures[0].status == 500 and log.exposures[0].error
    down, _, log, _ = await served(Answer(body=[b"a" * 300_000, b"b"], length=None, fail_after=1, bug=True))
    assert down.events == [("start", 200), ("send", b"a" * 300_000), ("abort",)]
    assert log.exposures[0].status == 500 and log.exposures[0].error
