"""One gRPC call on our own HTTP/2 path: the caller's stream, the upstream's, and the `Exchange` between.

The relay is driven by callbacks (no task per call): the server connection
(`abrouter.router.grpc.h2server`) hands it the caller's stream, the upstream pool
(`abrouter.router.grpc.h2upstream`) an upstream stream, and each stream's events come
back to the `Call` as their `Handler`. What the call does is the grpc.aio path's, frame
by frame instead of message by message:

- the head: ``POST`` and the method path as the target, the text metadata as headers, so
  the unit, the override, ``exposures`` and ``match`` work as over HTTP; an inference call
  (`oip.INFER_METHODS`: ``ModelInfer``, ``ModelStreamInfer``) waits for its first message,
  whose ``model_name`` is matched and rewritten per arm;
- the caller's metadata goes upstream (without the override and our tags, X-Forwarded-For
  appended), with what is left of the caller's deadline (none: the experiment's
  ``timeouts.read``) as ``grpc-timeout``;
- the upstream's response head goes back with ``x-ab-experiment``, ``x-ab-variant`` and
  ``x-ab-request-id`` added; data is relayed as it comes, both ways, each side's HTTP/2
  window credited only once the other side took the bytes (back-pressure end to end); the
  upstream's status, details and trailing metadata pass through unchanged (a
  trailers-only answer is split into a head, with the tags, and the trailers);
- a call the upstream refused unprocessed (RST_STREAM REFUSED_STREAM before any response
  frame, or a stream above the last id of its GOAWAY: RFC 9113 §8.7, a draining pod) is sent
  again on another connection to the same endpoint, at most `MAX_RETRIES` times and within
  its deadline, from the request bytes kept until the upstream's first response frame (at
  most `REPLAY_LIMIT`, counted as held by the caller's connection, `H2Connection.hold`, so
  its `HOLD_LIMIT` bounds them too); the caller sees one answer, one exposure, and the retry
  is counted (`abrouter_grpc_retries_total`), not as an error;
- the router's own failures (`wire.render`): an unreachable upstream, or one that reset the
  call before answering (refused past the retries, or with another code), is UNAVAILABLE
  naming the variant; one that reset it mid-answer
  ends the caller's stream with INTERNAL naming the variant (trailers after what was
  relayed); a deadline passed first (or the upstream's own DEADLINE_EXCEEDED within
  `wire.DEADLINE_SLACK_S` of it) is DEADLINE_EXCEEDED and the upstream's stream is
  reset (CANCEL); all are errors of the variant. A caller's cancel resets the upstream's
  stream and is no error (499), unless it came at the deadline (the caller's clock fired
  first: the upstream was too slow).
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from typing import TYPE_CHECKING, Final, Protocol

from abrouter.router import exchange
from abrouter.router.errors import UpstreamTimeout, UpstreamUnavailable
from abrouter.router.exchange import Exchange, Failure, Incoming, Problem
from abrouter.router.grpc import oip, wire
from abrouter.router.h2 import frames
from abrouter.router.h2.connection import Fields, H2Connection, Handler, Stream
from abrouter.router.matching import ModelAt

if TYPE_CHECKING:
    import asyncio

    from abrouter.router.state import Router

log = logging.getLogger("abrouter.grpc")

#: The most of an inference call's first message held to read its model name: a larger
#: message (a big tensor) is read from its first bytes, where serialisers write the name.
NAME_PREFIX: Final = 64 * 1024
#: How many times a call the upstream refused unprocessed is sent again before it fails UNAVAILABLE:
#: a draining pod's refusals are over after one (the next connection goes to a live one); a bound,
#: so an upstream that refuses every call (over its own concurrency limit) is not hammered.
MAX_RETRIES: Final = 2
#: The most request bytes kept to send again after a refusal (until the upstream's first response
#: frame): a call that streamed more before it was refused fails UNAVAILABLE instead.
REPLAY_LIMIT: Final = 64 * 1024
_TIMED_OUT: Final = "the call's deadline passed before the upstream finished"
#: The calls' deadlines are kept in buckets this wide (seconds): a call's DEADLINE_EXCEEDED comes at most this late.
DEADLINE_GRAIN_S: Final = 0.01


class Deadlines:
    """The deadlines of one event loop's calls, in buckets of `DEADLINE_GRAIN_S`: one loop timer per
    bucket, not one per call (a uvloop timer set and cancelled per call cost about a tenth of a
    unary call's relay, its handle closed on another pass of the loop)."""

    __slots__ = ("buckets", "last", "last_key", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[int, set[Call]] = {}
        #: The bucket added to last, and its key: the next calls' deadlines mostly fall in it too (no lookup).
        self.last: set[Call] | None = None
        self.last_key = 0

    def add(self, call: Call, at: float) -> int:
        """Expire `call` (`Call._expired`) once `at` passed; the bucket's key, for `remove`."""
        key = math.ceil(at / DEADLINE_GRAIN_S)
        bucket = self.last if key == self.last_key else self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = set()
            self.loop.call_at(key * DEADLINE_GRAIN_S, self._fire, key)
        self.last, self.last_key = bucket, key
        bucket.add(call)
        return key

    def remove(self, call: Call, key: int) -> None:
        bucket = self.last if key == self.last_key else self.buckets.get(key)
        if bucket is not None:
            bucket.discard(call)

    def _fire(self, key: int) -> None:
        if key == self.last_key:
            self.last, self.last_key = None, 0
        for call in self.buckets.pop(key, ()):
            try:
                call._expired()
            except Exception:  # one call's bug does not keep the others' deadlines back
                log.exception("bug while expiring the gRPC call %s", call.method[:200])
                call.crashed()


_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = weakref.WeakKeyDictionary()


def deadlines(loop: asyncio.AbstractEventLoop) -> Deadlines:
    """The loop's `Deadlines` (one per loop)."""
    found = _deadlines.get(loop)
    if found is None:
        found = _deadlines[loop] = Deadlines(loop)
    return found


class Upstreams(Protocol):
    """Where a call gets its upstream stream (`abrouter.router.grpc.h2upstream.Pools`)."""

    def open(self, address: str, call: Call, *, connect_s: float, avoid: H2Connection | None = None) -> None:
        """Open a stream to `address` for `call`: `Call.opened` now or later, or `Call.unreachable`; on
        another connection than `avoid` (which refused the call) unless no other can be had."""


class Call(Handler):
    """One call (see the module docstring); the `Handler` of both its streams."""

    __slots__ = (
        "arrived",
        "bucket",
        "collecting",
        "counted",
        "cut",
        "deadline",
        "debt",
        "done",
        "down",
        "ex",
        "forward",
        "forwarded_for",
        "head_sent",
        "held",
        "kept",
        "loop",
        "method",
        "path",
        "peer",
        "reads",
        "rename",
        "replay",
        "request_ended",
        "retries",
        "router",
        "stream",
        "text",
        "timeout",
        "timer",
        "timers",
        "up",
        "up_credited",
        "up_sent",
        "up_stream",
        "upstreams",
        "waiting",
    )

    def __init__(
        self, router: Router, upstreams: Upstreams, down: H2Connection, stream: Stream, peer: str,
        timers: Deadlines | None = None,
    ) -> None:  # fmt: skip
        """`timers`: the loop's `Deadlines` (`deadlines(down.loop)`), which a connection looks up once for its calls."""
        self.router, self.upstreams, self.down, self.stream = router, upstreams, down, stream
        self.loop: asyncio.AbstractEventLoop = down.loop
        self.timers = timers if timers is not None else deadlines(self.loop)
        #: The caller's fields: its text metadata (as the exchange reads headers), those sent upstream, and the
        #: ``:path`` field (sent upstream as it is).
        self.text: Fields = []
        self.forward: Fields = []
        self.path: tuple[str, str] = _NO_PATH
        #: The X-Forwarded-For values the caller sent, joined (None: none).
        self.forwarded_for: str | None = None
        self.method = ""
        self.peer = peer
        self.ex: Exchange | None = None
        self.up: H2Connection | None = None
        self.up_stream: Stream | None = None
        #: Request data held until the upstream stream is open (None once it is).
        self.waiting: list[bytes] | None = []
        self.collecting = False
        self.held = 0
        #: An inference call while some experiment matches or renames models: its first message is read.
        self.reads = False
        self.request_ended = False
        self.head_sent = False
        self.done = False
        self.timeout: float | None = None
        #: When the request head arrived: the deadline counts from it, as the caller's does.
        self.arrived = 0.0
        self.deadline = 0.0
        #: The first message's wait (an inference call), and the deadline's bucket (`Deadlines`; 0: none).
        self.timer: asyncio.TimerHandle | None = None
        self.bucket = 0
        #: A renamed ModelStreamInfer: (the name matched, the variant's), the partial message
        #: held, and the bytes more we sent upstream than the caller sent us (credited less).
        self.rename: tuple[str, str] | None = None
        self.cut = b""
        self.debt = 0
        #: What was sent upstream (`kept` bytes), to send again if it is refused; None once the
        #: upstream answered or past `REPLAY_LIMIT`. The data the current upstream stream reported
        #: sent, and the most any attempt did (the caller is credited once per byte).
        self.replay: list[bytes] | None = []
        self.kept = 0
        #: The most bytes kept by any attempt, counted as held by the caller's connection (`hold`, `let_go`).
        self.counted = 0
        self.retries = 0
        self.up_sent = 0
        self.up_credited = 0

    # --- the caller's side ---

    def begin(self, fields: Fields, end_stream: bool) -> None:
        """The caller's request head arrived."""
        self.arrived = self.loop.time()
        method = content_type = ""
        text, forward = self.text, self.forward
        for field in fields:  # one pass: what the call is, what the exchange reads, what goes upstream
            key = field[0]
            if key[:1] == ":":
                if key == ":path":
                    self.method, self.path = field[1], field
                elif key == ":method":
                    method = field[1]
                continue
            if not key.endswith("-bin"):
                text.append(field)
            if key in wire.H2_DROP:  # not forwarded (`wire.H2_DROP`); the deadline and X-Forwarded-For are read
                if key == "grpc-timeout":
                    self.timeout = wire.parse_timeout(field[1])
                elif key == "x-forwarded-for":
                    prior = self.forwarded_for
                    self.forwarded_for = field[1] if prior is None else f"{prior}, {field[1]}"
                continue
            if key == "content-type":
                content_type = field[1]
            forward.append(field)
        if method != "POST" or not self.method:
            self.done = True
            self.down.reset(self.stream, frames.PROTOCOL_ERROR)
            return
        if not content_type.startswith("application/grpc"):
            self.done = True  # gRPC over HTTP2: 415 for a content type that is not gRPC's
            self.down.send_headers(self.stream, [(":status", "415")], end_stream=True)
            return
        self.request_ended = end_stream
        self.reads = self.method in oip.INFER_METHODS and self.router.lanes.gateway.reads_models
        if self.reads and not end_stream:
            self.collecting = True  # its first message names the model
            # A caller that never sends it is cut (no exposure, no error): its deadline, or the body deadline.
            wait = self.timeout if self.timeout is not None else self.router.guard.limits.body_idle_s
            self.timer = self.loop.call_later(wait, self._never_sent)
            return
        self._start()

    def _request_data(self, payload: bytes, end: bool) -> None:
        if end:
            self.request_ended = True
        if self.done:
            self.down.consumed(self.stream, len(payload))  # the call ended: dropped
            return
        if self.rename is not None:
            payload = self._renamed(payload)
        up_stream = self.up_stream
        if up_stream is not None:
            assert self.up is not None
            if self.replay is not None and payload:  # kept first: counted as held before it is credited
                self._keep(payload)
            self.up.send_data(up_stream, payload, end_stream=end)
            return
        assert self.waiting is not None
        if payload:
            self.waiting.append(payload)
            self.held += len(payload)
        if self.collecting and (end or self.held >= 5 + NAME_PREFIX or _first_message(self.waiting, self.held)):
            self.collecting = False
            self._start()

    def _never_sent(self) -> None:
        self.timer = None
        if self.collecting and not self.done:
            self.done = True
            self.down.reset(self.stream, frames.CANCEL)

    def _start(self) -> None:
        """Assign the call (its first message read, for an inference call) and open the upstream stream."""
        if self.timer is not None:
            self.timer.cancel()
        data = b"".join(self.waiting or []) if self.reads else b""
        first, whole = _first_prefix(data) if data else (None, False)
        name = (oip.model_name(first) if whole else oip.name_in_prefix(first)) if first else None
        at = ModelAt(name, "message", 0, 0) if name else None
        incoming = Incoming("POST", self.method, self.text, self.peer, "http")
        try:  # the message is renamed here, not by the exchange: it may be whole or its first bytes only
            ex = self.ex = Exchange.start(self.router, incoming, now=time.time(), model_at=at)
        except exchange.Refused as refused:
            self._fail(refused.problem)
            self.done = True
            return
        model = ex.arm.model
        if first is not None and name and model and model != name:  # the variant's own model name
            head = _renamed_first(data[: 5 + len(first)], first, whole, model)
            rest = data[5 + len(first) :]
            if self.method == oip.STREAM_INFER and whole:  # its later messages too, as they come
                self.rename = (name, model)
                rest = self._renamed(rest)
            self.debt += len(head) - 5 - len(first)
            self.waiting = [head, rest]
        address = ex.arm.grpc_upstream
        if address is None:
            self._fail_upstream(UpstreamUnavailable(f"variant {ex.arm.name!r} has no grpc_upstream"))
            return
        table = ex.table
        timeout = self.timeout if self.timeout is not None else table.read_s
        self.deadline = self.arrived + timeout
        self.bucket = self.timers.add(self, self.deadline)
        self.upstreams.open(address, self, connect_s=min(table.connect_s, timeout))

    # --- the upstream's side ---

    def opened(self, up: H2Connection, stream: Stream) -> None:
        """The upstream stream is open: the head and the data held so far go out."""
        if self.done:
            up.reset(stream, frames.CANCEL)
            return
        self.up, self.up_stream = up, stream
        stream.handler = self
        stream.budget = self.down.budget  # its window grows as far as the caller's connection allows
        ex = self.ex
        assert ex is not None
        target = ex.incoming.target
        head = [_POST, _SCHEME, self.path if target == self.method else (":path", target), ex.arm.authority, _TE]
        head += self.forward  # the caller's metadata but `wire.H2_DROP`, then X-Forwarded-For with the caller's address
        forwarded, peer = self.forwarded_for, self.peer
        if peer:
            head.append((_XFF, peer if forwarded is None else f"{forwarded}, {peer}"))
        elif forwarded is not None:
            head.append((_XFF, forwarded))
        head.append((_TIMEOUT, wire.encode_timeout(self.deadline - self.loop.time())))
        waiting, self.waiting = self.waiting, None
        if not waiting and self.request_ended:
            up.send_headers(stream, head, end_stream=True)
            return
        up.send_headers(stream, head)
        for chunk in waiting or ():
            if self.replay is not None:
                self._keep(chunk)
            up.send_data(stream, chunk)
        if self.request_ended:
            up.send_data(stream, b"", end_stream=True)

    def _keep(self, chunk: bytes) -> None:
        """`chunk` goes upstream: kept to send again, up to `REPLAY_LIMIT`, and counted as held by the caller's
        connection (once: what a retry sends again was counted by the attempt before)."""
        assert self.replay is not None
        self.kept += len(chunk)
        if self.kept > REPLAY_LIMIT:
            self._drop_replay()
            return
        self.replay.append(chunk)
        if self.kept > self.counted:
            self.down.hold(self.stream, self.kept - self.counted)
            self.counted = self.kept

    def _drop_replay(self) -> None:
        """Nothing will be sent again: what was kept is let go."""
        self.replay = None
        if self.counted:
            self.down.let_go(self.stream, self.counted)
            self.counted = 0

    def unreachable(self, reason: str) -> None:
        """No connection to the upstream could be made."""
        if not self.done:
            self._fail_upstream(UpstreamUnavailable(reason))

    def _response_head(self, fields: Fields) -> None:
        ex = self.ex
        assert ex is not None
        head = fields.copy()
        _add_tags(head, ex)
        self.down.send_headers(self.stream, head)
        self.head_sent = True
        ex.first_byte()

    def _response_end(self, fields: Fields) -> None:
        """The upstream's trailers (or its trailers-only answer): its status, passed through unchanged."""
        ex = self.ex
        assert ex is not None
        code = wire.status_of(fields)
        if code == wire.DEADLINE_EXCEEDED and self.loop.time() >= self.deadline - wire.DEADLINE_SLACK_S:
            # The deadline we passed on fired there first: our own timeout, as if our clock had (the grpc.aio path's).
            if self.up is not None and self.up_stream is not None:
                self.up.reset(self.up_stream, frames.CANCEL)
            self._fail_upstream(UpstreamTimeout(_TIMED_OUT))
            return
        http = wire.http_status(code)
        ex.received(http, failed=http >= 500)  # wire.is_error, its HTTP status computed once
        if not self.head_sent:
            status = next((v for k, v in fields if k == ":status"), "200")
            content_type = next((v for k, v in fields if k == "content-type"), "application/grpc")
            self._response_head([(":status", status), ("content-type", content_type)])
            fields = [(k, v) for k, v in fields if k[:1] != ":" and k != "content-type"]
        elif any(field[0][:1] == ":" for field in fields):  # trailers carry none but from a broken upstream
            fields = [(k, v) for k, v in fields if k[:1] != ":"]
        self.down.send_trailers(self.stream, fields)
        up, up_stream = self.up, self.up_stream
        if up is not None and up_stream is not None and not up_stream.local_closed:
            up.reset(up_stream, frames.CANCEL)  # answered before the request ended: the rest is not needed
        self._finish()

    def _upstream_reset(self, code: int) -> None:
        if self.done:
            return
        if not self.head_sent:
            if code == frames.REFUSED_STREAM and self._retry():
                return
            self._fail_upstream(UpstreamUnavailable(f"the upstream reset the call (HTTP/2 error {code})"))
            return
        assert self.ex is not None
        log.warning("variant %s: upstream reset the call mid-response (HTTP/2 error %d)", self.ex.variant.name, code)
        self.ex.aborted()
        # Trailers, not a reset: a client that sees RST_STREAM may drop the head it already has
        # (grpc-core does), tags and all; INTERNAL after what was relayed says the answer is cut.
        details = f"variant {self.ex.variant.name!r}: the upstream reset the call mid-answer"
        self.down.send_trailers(
            self.stream, [("grpc-status", str(wire.INTERNAL)), ("grpc-message", wire.percent_encode(details))]
        )
        self._finish()

    def _retry(self) -> bool:
        """Send the call again after the upstream refused it unprocessed (RFC 9113 §8.7), on another
        connection: whether it was (not past `MAX_RETRIES`, the deadline, or the bytes kept)."""
        replay, ex, up = self.replay, self.ex, self.up
        if replay is None or self.retries >= MAX_RETRIES or self.loop.time() >= self.deadline:
            return False
        assert ex is not None and up is not None
        address = ex.variant.grpc_upstream
        assert address is not None
        self.retries += 1  # counted, logged at debug only: a draining pod refuses every call it had in flight
        self.router.metrics.grpc_retries[(ex.table.experiment.name, ex.variant.name)] += 1
        log.debug("variant %s: the upstream refused a call unprocessed; sent again (%d)", ex.variant.name, self.retries)
        self.up = self.up_stream = None
        self.waiting, self.replay, self.kept, self.up_sent = replay, [], 0, 0
        connect_s = min(ex.table.experiment.timeouts.connect_s, self.deadline - self.loop.time())
        self.upstreams.open(address, self, connect_s=connect_s, avoid=up)
        return True

    # --- Handler, for both streams ---

    def headers(self, stream: Stream, fields: Fields, end_stream: bool) -> None:
        if stream is self.stream:  # the caller's trailers: its request is over
            self._request_data(b"", True)
        elif self.done:
            return
        else:
            if self.replay is not None:  # the upstream took the call: never sent again
                self._drop_replay()
            if end_stream:
                self._response_end(fields)
            elif not self.head_sent and not wire.informational(fields):  # a 1xx head: the final one follows
                self._response_head(fields)

    def data(self, stream: Stream, payload: bytes, end_stream: bool) -> None:
        if stream is self.stream:
            self._request_data(payload, end_stream)
            return
        if self.done:
            return
        if self.replay is not None:
            self._drop_replay()
        if payload:
            self.down.send_data(self.stream, payload)
        if end_stream:  # no trailers: no status either
            self._response_end([])

    def reset(self, stream: Stream, code: int) -> None:
        if stream is self.stream:
            self._caller_gone()
            self._answer_dropped()
        else:
            self._upstream_reset(code)

    def sent(self, stream: Stream, size: int) -> None:
        if stream is self.stream:  # response data reached the caller's transport: the upstream may send more
            if self.up is not None and self.up_stream is not None:
                self.up.consumed(self.up_stream, size)
            return
        up_sent = self.up_sent = self.up_sent + size
        if up_sent <= self.up_credited:  # sent again after a refusal: the caller was credited for it
            return
        size = min(size, up_sent - self.up_credited)
        self.up_credited = up_sent
        if self.debt > 0:  # a renamed message was longer than the caller's: not the caller's bytes
            paid = min(self.debt, size)
            self.debt -= paid
            size -= paid
        self._credit_caller(size)

    def _credit_caller(self, size: int) -> None:
        if self.debt < 0:  # renamed messages were shorter than the caller's: its bytes left anyway
            size -= self.debt
            self.debt = 0
        if size:
            self.down.consumed(self.stream, size)

    def _renamed(self, payload: bytes) -> bytes:
        """The caller's data with every whole message renamed (a renamed ModelStreamInfer); a partial one is held."""
        assert self.rename is not None
        old, new = self.rename
        messages, self.cut = oip.message_frames(self.cut + payload if self.cut else payload)
        out = b"".join(oip.framed(flag, oip.renamed(m, old, new) if not flag else m) for flag, m in messages)
        self.debt += len(out) - len(payload)  # what the caller sent is credited as what went upstream goes out
        if self.debt < 0:
            self._credit_caller(0)
        return out

    # --- endings ---

    def _caller_gone(self) -> None:
        """The caller reset its stream, or its connection closed."""
        if self.done:
            return
        if self.up is not None and self.up_stream is not None:
            self.up.reset(self.up_stream, frames.CANCEL)
        ex = self.ex
        if ex is None:  # not assigned yet: nothing to record
            self.done = True
            return
        if self.loop.time() >= self.deadline - wire.DEADLINE_SLACK_S:
            ex.failed(UpstreamTimeout(_TIMED_OUT))
        else:
            ex.client_gone()
        self._finish()

    def _answer_dropped(self) -> None:
        """The caller's stream is gone, with what of the answer waited for it: the upstream stream lets it go."""
        if self.up is not None and self.up_stream is not None:
            self.up.drop(self.up_stream)

    def _expired(self) -> None:
        self.bucket = 0
        if self.done:
            return
        if self.up is not None and self.up_stream is not None:
            self.up.reset(self.up_stream, frames.CANCEL)
        self._fail_upstream(UpstreamTimeout(_TIMED_OUT))

    def _fail_upstream(self, exc: UpstreamUnavailable | UpstreamTimeout) -> None:
        assert self.ex is not None
        self._fail(self.ex.failed(exc))
        self._finish()

    def _fail(self, problem: Problem) -> None:
        """Answer with the router's own failure: the tags in the head, then the status."""
        code, details = wire.CODE_OF_FAILURE[problem.failure], problem.message
        tags = wire.h2_tags(problem.headers)
        if not self.head_sent:
            self.down.send_headers(self.stream, [(":status", "200"), ("content-type", "application/grpc"), *tags])
            self.head_sent = True
        trailers = [("grpc-status", str(code)), ("grpc-message", wire.percent_encode(details))]
        self.down.send_trailers(self.stream, trailers)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.counted:
            self._drop_replay()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.bucket:
            self.timers.remove(self, self.bucket)
            self.bucket = 0
        assert self.ex is not None
        self.ex.finish(now=time.time())

    def crashed(self) -> None:
        """A bug while relaying: INTERNAL to the caller, the upstream's stream reset."""
        if self.done:
            return
        if self.up is not None and self.up_stream is not None:
            self.up.reset(self.up_stream, frames.CANCEL)
        if self.ex is None:
            self.done = True
            self.down.reset(self.stream, frames.INTERNAL_ERROR)
            return
        self.ex.crashed()
        if self.head_sent:
            self.down.reset(self.stream, frames.INTERNAL_ERROR)
            self._answer_dropped()
        else:
            self._fail(self.ex.problem(Failure.INTERNAL, "internal error in the router; see its log"))
        self._finish()


def _tags(ex: Exchange) -> Fields:
    """The tags of `ex`'s answer as HTTP/2 fields: ``wire.h2_tags(ex.response_headers([]))``."""
    tags: Fields = []
    _add_tags(tags, ex)
    return tags


def _add_tags(fields: Fields, ex: Exchange) -> None:
    """`_tags(ex)` appended to `fields`: the arm's two made once per routing table (`routing.Arm`) and the request
    id, when no unit cookie was made up (every call but a cookie-keyed experiment's first)."""
    if ex.choice.new_cookie is not None:
        fields += wire.h2_tags(ex.response_headers([]))
        return
    arm = ex.arm
    fields.append(arm.experiment_tag)
    fields.append(arm.variant_tag)
    fields.append((wire.REQUEST_ID_FIELD, ex.request_id))


_POST: Final = (":method", "POST")
_SCHEME: Final = (":scheme", "http")
_TE: Final = ("te", "trailers")
_NO_PATH: Final = (":path", "")
_XFF: Final = "x-forwarded-for"
_TIMEOUT: Final = "grpc-timeout"


def _first_message(chunks: list[bytes], held: int) -> bool:
    """Whether the first gRPC message of the data so far is whole."""
    if held < 5:
        return False
    head = chunks[0][:5] if len(chunks[0]) >= 5 else b"".join(chunks)[:5]
    return held >= 5 + int.from_bytes(head[1:5], "big")


def _first_prefix(data: bytes) -> tuple[bytes | None, bool]:
    """The first message of `data` (or as much of it as arrived), whether it is whole; None if compressed or cut."""
    if len(data) < 5 or data[0] != 0:
        return None, False
    size = int.from_bytes(data[1:5], "big")
    first = data[5 : 5 + size]
    return first, len(first) == size


def _renamed_first(part: bytes, first: bytes, whole: bool, name: str) -> bytes:
    """The first message (`part`: its 5-byte prefix and `first`, whole or its first bytes) with the model name
    `name`; a message not whole keeps its declared length but for the change in the name's."""
    if whole:
        return oip.framed(0, oip.with_model_name(first, name))
    renamed = oip.renamed_prefix(first, name)
    if renamed is None:  # the name was not among the first bytes: nothing was matched by it either
        return part
    size = int.from_bytes(part[1:5], "big") + len(renamed) - len(first)
    return b"\x00" + size.to_bytes(4, "big") + renamed
