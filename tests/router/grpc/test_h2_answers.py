"""How much of its answers' data a caller that does not read can make the router hold (`WindowBudget`).

A caller on the router's gRPC port, written by hand, opens many calls to an upstream, also by hand, that
sends each answer as fast as the router's windows let it. The caller takes a little of each answer (its
stream windows) and then nothing more: the router holds, for that caller's connection, at most an initial
window per call (`CLIENT_STREAM_WINDOW`) and its budget of growth (`H2Connection.BUDGET`), not a stream
window per call; the upstream's sends stall per stream, so another caller's calls on the same upstream
connection go on; the budget comes back when the calls are reset. The budget is lowered here, so a test
moves a few MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import grpc.aio
import pytest

from abrouter.router.grpc import h2server
from abrouter.router.h2 import frames
from abrouter.router.h2.connection import CLIENT_STREAM_WINDOW, STREAM_WINDOW
from tests.router.grpc.conftest import GrpcRouter, MakeGrpcRouter
from tests.router.grpc.test_h2_conformance import (
    OK_HEAD,
    UNIT,
    WAIT_S,
    Frame,
    UpstreamWire,
    Wire,
    _message,
    _until,
    upstream,
)
from tests.router.grpc.test_h2_hold import TIMEOUTS, Caller, _body, _streams
from tests.router.grpc.windows import WindowedSender

own = pytest.mark.parametrize("grpc_server", ["own"])

#: The budget of growth per caller connection here: about four streams grown to `STREAM_WINDOW`.
BUDGET = 4 << 20
#: Calls a slow caller opens: without the budget, each would make the router hold a stream window.
CALLS = 16
#: What the router may hold for the slow caller's calls (the bound under test).
BOUND = CALLS * CLIENT_STREAM_WINDOW + BUDGET
#: The slow caller's stream windows: each call's first bytes reach it (so the router's windows would grow).
TAKEN = 32 << 10
#: Each slow call's answer: more than a stream window.
ANSWER = 2 * STREAM_WINDOW


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> int:
    """`BUDGET` for the listener's connections."""
    monkeypatch.setattr(h2server.GrpcConnection, "BUDGET", BUDGET)
    return BUDGET


class Answers(WindowedSender):
    """The upstream's end of the router's connection: each call's answer sent as the router's windows allow,
    a frame per stream in turn, its trailers once it is whole (or once every answer is: `hold_trailers`)."""

    END_WITH_DATA = False
    wire: UpstreamWire

    def __init__(self, wire: UpstreamWire) -> None:
        super().__init__(wire)
        #: The largest window the router gave each stream.
        self.most: dict[int, int] = {}
        self.hold_trailers = False
        self.whole: list[int] = []

    def answer(self, stream_id: int, body: bytes) -> None:
        self.wire.respond(stream_id, OK_HEAD)
        window = self.windows.setdefault(stream_id, self.initial)
        self.most[stream_id] = window
        self.left[stream_id] = body
        self.sent[stream_id] = 0

    def take(self, f: Frame) -> None:
        self.take_window(f)
        if f.kind == frames.HEADERS:
            self.windows.setdefault(f.stream_id, self.initial)
        elif f.kind == frames.WINDOW_UPDATE and f.stream_id in self.most:
            self.most[f.stream_id] = max(self.most[f.stream_id], self.windows[f.stream_id])
        elif f.kind == frames.RST_STREAM:
            self.left.pop(f.stream_id, None)

    async def step(self) -> Frame:
        f = await self.wire.step()
        self.take(f)
        return f

    async def heads(self, count: int) -> list[int]:
        """Frames in until `count` calls began (all so far, in order)."""
        for _ in range(100_000):
            if len(self.wire.heads) >= count:
                return list(self.wire.heads)
            await self.step()
        raise AssertionError(f"{count} calls never began")

    def finished(self, stream_id: int) -> None:
        self.whole.append(stream_id)
        if not self.hold_trailers:
            self.wire.respond(stream_id, [("grpc-status", "0")], end_stream=True)

    async def until_sent(self, streams: list[int]) -> None:
        """Send as the windows allow, until each of `streams` was answered whole."""
        for _ in range(1_000_000):
            while self.pump():
                await self.wire.writer.drain()
            if not any(s in self.left for s in streams):
                return
            await self.step()
        raise AssertionError(f"not sent: {[s for s in streams if s in self.left]}")

    async def until_reset(self, streams: list[int]) -> None:
        for _ in range(100_000):
            if set(streams) <= set(self.wire.resets):
                return
            await self.step()
        raise AssertionError("not reset")

    def trailers(self) -> None:
        for s in self.whole:
            self.wire.respond(s, [("grpc-status", "0")], end_stream=True)


async def _slow_caller(r: GrpcRouter) -> Caller:
    """A caller that gives each stream `TAKEN` of window, the connection plenty, and credits nothing after."""
    caller = Caller(await Wire.client(r, {frames.INITIAL_WINDOW_SIZE: TAKEN}))
    caller.credit = False
    caller.wire.send(frames.window_update(0, 1 << 30))
    for _ in range(100):
        caller.take(await caller.wire.frame())
        if caller.initial == STREAM_WINDOW:
            return caller
    raise AssertionError("no SETTINGS from the router")


async def _reading(caller: Caller, until: asyncio.Event) -> None:
    """The caller reads what comes (crediting nothing) until `until` is set, then all that came before it."""
    while not until.is_set():
        while caller.pump():
            await caller.wire.writer.drain()
        await caller.settle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), 0.05)
    await caller.settle()


async def _slow_calls(caller: Caller, streams: list[int], until: asyncio.Event) -> None:
    """Open a slow call on each of `streams`, then read (crediting nothing) until the upstream's `until`."""
    for s in streams:
        caller.open(s, "/test.Quirky/Slow", _message(b"slow"))
    await _reading(caller, until)


def _held(a: Answers, caller: Caller, streams: list[int], up: list[int] | None = None) -> int:
    """What the router holds of the answers on `streams` (the caller's ids; `up`, the upstream's, if other):
    what the upstream sent less what reached the caller."""
    return sum(a.sent[s] for s in up or streams) - sum(len(caller.bodies[s]) for s in streams)


def _held_within_the_budget(a: Answers, caller: Caller, streams: list[int], up: list[int] | None = None) -> None:
    """An initial window per call and the budget, and the budget spent (the windows grew as far as it allows);
    the upstream stopped per stream, its connection's window still open."""
    held = _held(a, caller, streams, up)
    assert CALLS * CLIENT_STREAM_WINDOW + BUDGET // 2 < held <= BOUND, (held, BOUND)
    assert a.conn_window > 0 and all(a.windows[s] <= 0 for s in up or streams), (a.conn_window, a.windows)
    assert all(TAKEN == len(caller.bodies[s]) for s in streams)


def _fast_answer() -> bytes:
    return b"".join(_message(random.Random(1000 + n).randbytes(1 << 20)) for n in range(8))


async def _fast_call(r: GrpcRouter) -> list[bytes]:
    """Another caller (grpc.aio, reading): its call's 8 MiB answer, message by message."""
    async with r.channel() as channel:
        call = channel.unary_stream("/test.Quirky/Fast")(b"x", metadata=UNIT, timeout=WAIT_S)
        return [bytes(m) async for m in call]


def _fast_messages() -> list[bytes]:
    return [random.Random(1000 + n).randbytes(1 << 20) for n in range(8)]


# --- the bound, and another caller's calls on the same upstream connection ---


@own
@pytest.mark.usefixtures("budget")
async def test_a_caller_reading_none_of_many_answers_is_held_to_its_budget_while_another_callers_call_flows(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    slow = _streams(CALLS)
    answers = {s: _body(s, ANSWER - 5) for s in slow}
    shut, fast_done, read = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[Answers] = []

    async def serve(wire: UpstreamWire) -> None:
        a = Answers(wire)
        seen.append(a)
        for s in await a.heads(CALLS):
            a.answer(s, answers[s])
        await a.until_shut()
        shut.set()
        fast = (await a.heads(CALLS + 1))[-1]
        a.answer(fast, _fast_answer())
        await a.until_sent([fast])
        await asyncio.wait_for(fast_done.wait(), WAIT_S)
        assert not any(s in a.whole for s in slow)  # still held back, stream by stream
        await asyncio.wait_for(read.wait(), WAIT_S)
        await a.until_sent(slow)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await _slow_caller(r)
        try:
            await _slow_calls(caller, slow, shut)
            (a,) = seen
            assert a.initial == CLIENT_STREAM_WINDOW
            _held_within_the_budget(a, caller, slow)
            assert await _fast_call(r) == _fast_messages()
            fast_done.set()
            await caller.settle()
            assert not caller.ended & set(slow)
            caller.credit = True  # the slow caller reads now: every answer comes whole, in order
            caller.wire.send(*(frames.window_update(s, 1 << 24) for s in slow))
            read.set()
            await caller.until_ended(slow)
        finally:
            caller.wire.close()
    assert len(u.connections) == 1 and not caller.resets and caller.goaway is None
    for s in slow:
        assert caller.trailers[s]["grpc-status"] == "0", caller.trailers[s]
        assert bytes(caller.bodies[s]) == answers[s]


@own
@pytest.mark.usefixtures("budget")
async def test_answers_that_end_within_their_windows_keep_their_budget_until_the_caller_takes_them(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    """Answers shorter than a grown window end upstream while the caller has not read them: their upstream
    streams are over, yet their bytes wait in the router for the caller, so the growth that let them in is
    not given to the calls that come next until the caller took them (else each wave of calls could grow)."""
    grown = BUDGET // (STREAM_WINDOW - CLIENT_STREAM_WINDOW)  # the calls the budget lets grow whole
    first, then = _streams(grown), _streams(CALLS - grown, first=2 * grown + 1)
    answers = {s: _body(s, STREAM_WINDOW // 2) for s in first + then}  # within a grown window, beyond an initial one
    shut, again, read = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[Answers] = []

    async def serve(wire: UpstreamWire) -> None:
        a = Answers(wire)
        seen.append(a)
        for s in await a.heads(len(first)):
            a.answer(s, answers[s])
        await a.until_shut()
        shut.set()
        for s in (await a.heads(CALLS))[len(first) :]:
            a.answer(s, answers[s])
        await a.until_shut()
        again.set()
        await asyncio.wait_for(read.wait(), WAIT_S)
        await a.until_sent(first + then)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await _slow_caller(r)
        try:
            await _slow_calls(caller, first, shut)
            (a,) = seen
            assert sorted(a.whole) == first  # grown, and ended upstream: their bytes wait for the caller
            await _slow_calls(caller, then, again)
            assert sorted(a.whole) == first  # the next calls did not grow: the budget is still theirs
            held = _held(a, caller, first + then)
            assert held <= BOUND, (held, BOUND)
            caller.credit = True
            caller.wire.send(*(frames.window_update(s, 1 << 24) for s in first + then))
            read.set()
            await caller.until_ended(first + then)
        finally:
            caller.wire.close()
    assert not caller.resets and caller.goaway is None
    for s in first + then:
        assert caller.trailers[s]["grpc-status"] == "0", caller.trailers[s]
        assert bytes(caller.bodies[s]) == answers[s]


# --- what the calls held, and their budget, come back ---


@own
@pytest.mark.usefixtures("budget")
async def test_calls_a_slow_caller_resets_give_their_budget_back_to_its_next_calls(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    first = _streams(CALLS)
    then = _streams(CALLS, first=first[-1] + 2)
    shut, again = asyncio.Event(), asyncio.Event()
    seen: list[Answers] = []

    async def serve(wire: UpstreamWire) -> None:
        a = Answers(wire)
        seen.append(a)
        for s in await a.heads(CALLS):
            a.answer(s, _body(s, ANSWER - 5))
        await a.until_shut()
        shut.set()
        await a.until_reset(first)
        for s in (await a.heads(2 * CALLS))[CALLS:]:
            a.answer(s, _body(s, ANSWER - 5))
        await a.until_shut()
        again.set()

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await _slow_caller(r)
        try:
            await _slow_calls(caller, first, shut)
            (a,) = seen
            _held_within_the_budget(a, caller, first)
            for s in first:
                caller.reset(s)
            await _slow_calls(caller, then, again)
            assert all(a.wire.resets[s] == frames.CANCEL for s in first)
            _held_within_the_budget(a, caller, then)  # the windows grew again: the budget came back whole
        finally:
            caller.wire.close()
    assert caller.goaway is None


@own
@pytest.mark.usefixtures("budget")
async def test_an_upstream_connection_lost_gives_its_streams_budget_back_to_the_callers_next_calls(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    first = _streams(CALLS)
    then = _streams(CALLS, first=first[-1] + 2)
    shut, close, again = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[Answers] = []

    async def serve(wire: UpstreamWire) -> None:
        a = Answers(wire)
        seen.append(a)
        for s in await a.heads(CALLS):
            a.answer(s, _body(s, ANSWER - 5))
        await a.until_shut()
        if len(seen) == 1:  # the first connection goes away with the calls held
            shut.set()
            await asyncio.wait_for(close.wait(), WAIT_S)
            wire.writer.close()
            return
        again.set()

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await _slow_caller(r)
        try:
            await _slow_calls(caller, first, shut)
            _held_within_the_budget(seen[0], caller, first)
            close.set()
            # The router cut the calls (each an error of its variant) while their answers' bytes wait for us:
            # what was held of them comes now, then their ends, and then their budget is back.
            await _until(lambda: sum(r.router.metrics.errors.values()) >= CALLS)
            caller.credit = True
            caller.wire.send(*(frames.window_update(s, 1 << 24) for s in first))
            await caller.until_ended(first)
            caller.credit = False
            await _slow_calls(caller, then, again)
            # A new upstream connection (its own stream ids): the windows grew again, the budget came back whole.
            _held_within_the_budget(seen[1], caller, then, list(seen[1].sent))
        finally:
            caller.wire.close()
    assert all(caller.trailers[s]["grpc-status"] == "13" for s in first)  # INTERNAL: cut mid-answer
    assert caller.goaway is None


@own
@pytest.mark.usefixtures("budget")
async def test_an_upstream_connection_lost_after_its_streams_grew_and_their_data_was_taken_gives_the_budget_back(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    """Calls whose upstream streams grew as the caller took their first bytes (the budget spent), nothing of
    them held when the upstream connection is lost mid-answer: their growth comes back at once (there is no
    data left whose taking would give it back), so the caller's next calls grow as far as the budget allows."""
    first = _streams(CALLS)
    then = _streams(CALLS, first=first[-1] + 2)
    part = TAKEN * 3 // 4  # beyond a quarter of an initial window (the streams grow), within the caller's windows
    grown, close, again = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[Answers] = []

    async def serve(wire: UpstreamWire) -> None:
        a = Answers(wire)
        seen.append(a)
        if len(seen) == 1:  # the first connection: part of each answer, no end; lost once the windows grew
            a.hold_trailers = True
            streams = await a.heads(CALLS)
            for s in streams:
                a.answer(s, _body(s, part - 5))
            await a.until_sent(streams)
            while not all(a.windows[s] > CLIENT_STREAM_WINDOW - part for s in streams):  # each one's update
                await a.step()
            assert sum(max(0, a.windows[s] - CLIENT_STREAM_WINDOW) for s in streams) > BUDGET // 2  # they grew
            grown.set()
            await asyncio.wait_for(close.wait(), WAIT_S)
            wire.writer.close()
            return
        for s in await a.heads(CALLS):
            a.answer(s, _body(s, ANSWER - 5))
        await a.until_shut()
        again.set()

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await _slow_caller(r)
        try:
            await _slow_calls(caller, first, grown)
            assert all(len(caller.bodies[s]) == part for s in first)  # all of it taken: nothing held
            close.set()
            await caller.until_ended(first)
            await _slow_calls(caller, then, again)
            # A new upstream connection (its own stream ids): the windows grew again, the budget came back whole.
            _held_within_the_budget(seen[1], caller, then, list(seen[1].sent))
        finally:
            caller.wire.close()
    assert all(caller.trailers[s]["grpc-status"] == "13" for s in first)  # INTERNAL: cut mid-answer
    assert caller.goaway is None


@own
@pytest.mark.usefixtures("budget")
async def test_a_slow_caller_that_disconnects_resets_its_upstream_streams_and_the_connection_serves_others(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    slow = _streams(CALLS)
    shut, gone = asyncio.Event(), asyncio.Event()
    seen: list[Answers] = []

    async def serve(wire: UpstreamWire) -> None:
        a = Answers(wire)
        seen.append(a)
        for s in await a.heads(CALLS):
            a.answer(s, _body(s, ANSWER - 5))
        await a.until_shut()
        shut.set()
        await a.until_reset(slow)
        gone.set()
        fast = (await a.heads(CALLS + 1))[-1]
        a.answer(fast, _fast_answer())
        await a.until_sent([fast])

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await _slow_caller(r)
        try:
            await _slow_calls(caller, slow, shut)
            (a,) = seen
            _held_within_the_budget(a, caller, slow)
        finally:
            caller.wire.close()
        await asyncio.wait_for(gone.wait(), WAIT_S)
        assert all(a.wire.resets[s] == frames.CANCEL for s in slow)
        assert not a.left  # nothing more is sent for them, nor held
        assert await _fast_call(r) == _fast_messages()
    assert len(u.connections) == 1


# --- answers larger than the windows, beyond the budget, pass whole ---


@own
@pytest.mark.usefixtures("budget")
async def test_server_streaming_answers_beyond_the_windows_and_the_budget_pass_whole_the_growth_within_it(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    """A caller that reads: six answers of 4 MiB at once, more than the budget lets every stream grow to;
    the streams that did not grow pass at their initial window. The trailers wait until every answer went,
    so that no stream gives its growth back before the others took theirs."""
    calls = 6
    messages = [random.Random(n).randbytes(1 << 20) for n in range(4)]
    seen: list[Answers] = []

    async def serve(wire: UpstreamWire) -> None:
        a = Answers(wire)
        a.hold_trailers = True
        seen.append(a)
        streams = await a.heads(calls)
        for s in streams:
            a.answer(s, b"".join(_message(m) for m in messages))
        await a.until_sent(streams)
        a.trailers()

    async def one(channel: grpc.aio.Channel) -> list[bytes]:
        call = channel.unary_stream("/test.Quirky/Big")(b"x", metadata=UNIT, timeout=WAIT_S * 4)
        return [bytes(m) async for m in call]

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        async with r.channel() as channel:
            got = await asyncio.gather(*(one(channel) for _ in range(calls)))
    assert got == [messages] * calls
    (a,) = seen
    assert a.initial == CLIENT_STREAM_WINDOW
    growth = [most - CLIENT_STREAM_WINDOW for most in a.most.values()]
    assert max(growth) > STREAM_WINDOW // 2  # some grew
    assert sum(g for g in growth if g > 0) <= BUDGET, growth  # together within the budget
