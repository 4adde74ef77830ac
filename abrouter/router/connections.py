"""Client-side deadlines and the connection cap, for any server adapter. Pure: the caller passes the time.

A slow or silent client must not hold a socket for ever: 300 connections dripping their
headers once stayed open as long as they liked. Each connection gets a `ConnectionClock`,
a small state machine the adapter drives from its parser's events::

    accept ──> HEADERS ──headers complete──> BODY ──body complete──> BUSY
                  ^                                                   │
    IDLE ──first byte                                                 │
     ^                                                                │
     └─────────────── response done (none in flight) ─────────────────┘

and one `ConnectionGuard` per listener admits connections up to a cap and, from a
periodic `sweep`, closes those past their phase's deadline:

- HEADERS: `Limits.header_s` from the request's first byte (from the accept, for a
  connection's first request) to its last header line, however the bytes drip in (a
  drip resets nothing: that is the slowloris attack). So a new connection that sends
  nothing is closed after `header_s`, as nginx's ``client_header_timeout`` does.
- IDLE (between requests): `Limits.idle_s` without a byte. 75 s by default, like nginx's
  ``keepalive_timeout``: longer than the upstream keep-alive of the proxies that pool
  connections to us (ingress-nginx and AWS load balancers keep them 60 s), so that they
  close an idle connection before we do and never send a request into our close.
- BODY: `Limits.body_idle_s` without a byte of the body. A body that keeps coming is never
  cut, however big or slow (the README promises that large uploads stream); while the
  adapter has stopped reading (flow control: the upstream is slower than the client) the
  client cannot send, so no body deadline runs.
- BUSY (the request is whole and being answered): no client deadline; the upstream
  timeouts of the experiment apply.

uvicorn's protocols arm one ``loop.call_later`` per connection for the keep-alive idle
only; one sweep over every connection keeps the per-byte cost to two attribute writes and
covers all three phases. The aiohttp adapter is `abrouter.router.http.listener`; a
protocol-level server calls the same five methods from its parser callbacks.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field


class Phase(enum.Enum):
    IDLE = "idle"
    HEADERS = "header"
    BODY = "body"
    BUSY = "busy"


@dataclass(frozen=True)
class Limits:
    """Deadlines in seconds and the cap; see the module docstring for what each phase means."""

    #: From a request's first byte to the end of its headers.
    header_s: float = 10.0
    #: Longest silence while a request body is being received.
    body_idle_s: float = 30.0
    #: Longest silence of a connection between two requests (keep-alive idle).
    idle_s: float = 75.0
    #: Open connections beyond which new ones are closed at once.
    max_connections: int = 10_000

    def __post_init__(self) -> None:
        for name in ("header_s", "body_idle_s", "idle_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")

    @property
    def sweep_interval_s(self) -> float:
        """How often to sweep: a quarter of the shortest deadline, between 10 ms and 1 s.

        A connection is closed at most one interval after its deadline.
        """
        return min(1.0, max(0.01, min(self.header_s, self.body_idle_s, self.idle_s) / 4))


#: File descriptors kept for what is not a client connection: the listening sockets, Redis,
#: the spill files, the log, the spec source.
RESERVED_FDS = 64


def fd_bounded(limits: Limits, fd_limit: int) -> Limits:
    """`limits` with the cap lowered so that every admitted client can also have its upstream
    socket within the process's file-descriptor limit, with `RESERVED_FDS` to spare; so a
    connection beyond the cap is accepted and answered 503, never reset for want of a descriptor."""
    room = max(1, (fd_limit - RESERVED_FDS) // 2)
    if room >= limits.max_connections:
        return limits
    return dataclasses.replace(limits, max_connections=room)


@dataclass(eq=False)
class ConnectionClock:
    """One connection's phase and the times its deadline counts from."""

    limits: Limits
    #: Start of the current phase (IDLE, HEADERS) or time of the last byte (BODY).
    since: float
    phase: Phase = Phase.HEADERS  # from the accept: a new connection owes us a request
    #: Requests whose headers arrived and whose response is not done (pipelining).
    in_flight: int = 0
    #: The adapter stopped reading (flow control): the client cannot be late.
    paused: bool = False

    def received(self, now: float) -> None:
        """Bytes arrived from the client."""
        if self.phase is Phase.BODY:
            self.since = now
        elif self.phase is not Phase.HEADERS:  # IDLE or BUSY: the next request begins
            self.phase, self.since = Phase.HEADERS, now

    def headers_complete(self, now: float) -> None:
        self.in_flight += 1
        self.phase, self.since = Phase.BODY, now

    def body_complete(self) -> None:
        if self.phase is Phase.BODY:
            self.phase = Phase.BUSY

    def stream_opened(self, now: float) -> None:
        """A multiplexing connection's request arrived with its head (an HTTP/2 stream): `received`,
        `headers_complete` and `body_complete` at once (its body is the stream's, which no deadline of
        the connection's times)."""
        self.in_flight += 1
        self.phase, self.since = Phase.BUSY, now

    def response_done(self, now: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self.in_flight == 0 and self.phase is Phase.BUSY:
            self.phase, self.since = Phase.IDLE, now

    def settled(self, now: float) -> None:
        """A multiplexing connection's handshake is done (HTTP/2's preface): idle until a request opens."""
        if self.phase is Phase.HEADERS and not self.in_flight:
            self.phase, self.since = Phase.IDLE, now

    def pause(self) -> None:
        self.paused = True

    def resume(self, now: float) -> None:
        self.paused = False
        if self.phase is Phase.BODY:
            self.since = now  # the silence while we did not read is ours, not the client's

    def expired(self, now: float) -> Phase | None:
        """The phase whose deadline has passed, or None.

        While a response is owed (a request in flight), the next request's headers may wait:
        a client that pipelines, or sends its next request before reading the answer, is
        never cut through the in-flight response.
        """
        if self.paused or self.phase is Phase.BUSY or (self.phase is Phase.HEADERS and self.in_flight):
            return None
        if self.phase is Phase.IDLE:
            limit = self.limits.idle_s
        elif self.phase is Phase.HEADERS:
            limit = self.limits.header_s
        else:
            limit = self.limits.body_idle_s
        return self.phase if now - self.since >= limit else None


@dataclass
class ConnectionGuard:
    """Admits connections up to the cap and closes those past their deadline. One per listener."""

    limits: Limits
    _open: dict[ConnectionClock, Callable[[], None]] = field(default_factory=dict)
    #: Connections admitted and not yet closed, including those not yet registered.
    reserved: int = 0
    refused: int = 0
    timeouts: dict[Phase, int] = field(default_factory=lambda: {p: 0 for p in (Phase.HEADERS, Phase.BODY, Phase.IDLE)})

    @property
    def open(self) -> int:
        return self.reserved

    def admit(self) -> bool:
        """Reserve a place for a new connection; False (and counted) beyond the cap."""
        if self.reserved >= self.limits.max_connections:
            self.refused += 1
            return False
        self.reserved += 1
        return True

    def opened(self, clock: ConnectionClock, close: Callable[[], None]) -> None:
        """Register an admitted connection; `close` ends it at once."""
        self._open[clock] = close

    def closed(self, clock: ConnectionClock | None = None) -> None:
        """An admitted connection ended (registered or not)."""
        self.reserved = max(0, self.reserved - 1)
        if clock is not None:
            self._open.pop(clock, None)

    def sweep(self, now: float) -> int:
        """Close every connection past its deadline; the number closed."""
        late = [(clock, phase) for clock in self._open if (phase := clock.expired(now)) is not None]
        for clock, phase in late:
            self.timeouts[phase] += 1
            close = self._open.pop(clock)
            close()
        return len(late)
