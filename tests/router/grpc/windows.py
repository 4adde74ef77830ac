"""A hand-written HTTP/2 peer's sending side that keeps to the router's windows, for the hold tests.

`WindowedSender` sends each stream's data a frame per stream in turn, as far as the router's
windows (the stream's and the connection's) allow, and knows when the router lets nothing
more through (`until_shut`). The caller of `test_h2_hold` (request data) and the upstream of
`test_h2_answers` (answers) are both one.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from abrouter.router.h2 import frames
from tests.router.grpc.test_h2_conformance import Frame


class _Writer(Protocol):
    async def drain(self) -> None: ...


class _Wire(Protocol):
    writer: _Writer

    def send(self, *data: bytes) -> None: ...


class WindowedSender:
    """Each stream's data left (`left`) sent as the router's windows allow; what went, per stream (`sent`)."""

    #: Whether a stream's last DATA frame ends it (a request); else its trailers will (an answer).
    END_WITH_DATA: ClassVar[bool] = True

    def __init__(self, wire: _Wire) -> None:
        self.wire = wire
        self.initial = frames.DEFAULT_WINDOW
        self.conn_window = frames.DEFAULT_WINDOW
        self.windows: dict[int, int] = {}
        self.left: dict[int, bytes] = {}
        self.sent: dict[int, int] = {}
        self._pings = 0

    async def step(self) -> Frame:
        """The router's next frame, taken in."""
        raise NotImplementedError

    def take_window(self, f: Frame) -> None:
        """The router's SETTINGS_INITIAL_WINDOW_SIZE and WINDOW_UPDATEs, in our send windows."""
        if f.kind == frames.SETTINGS and not f.flags & frames.ACK:
            for key, value in frames.parse_settings(f.payload):
                if key == frames.INITIAL_WINDOW_SIZE:
                    for s in self.windows:
                        self.windows[s] += value - self.initial
                    self.initial = value
        elif f.kind == frames.WINDOW_UPDATE:
            increment = frames.parse_window_update(f.payload)
            if f.stream_id == 0:
                self.conn_window += increment
            elif f.stream_id in self.windows:
                self.windows[f.stream_id] += increment

    def finished(self, stream_id: int) -> None:
        """The last of `stream_id`'s data went out."""

    def pump(self) -> bool:
        """One frame on each stream with data left, as the windows allow: whether any went."""
        went = False
        for s, rest in list(self.left.items()):
            room = min(self.conn_window, self.windows[s], 16384, len(rest))
            if room <= 0:
                continue
            last = room == len(rest)
            self.wire.send(frames.data(s, rest[:room], end_stream=last and self.END_WITH_DATA))
            self.left[s] = rest[room:]
            self.windows[s] -= room
            self.conn_window -= room
            self.sent[s] += room
            went = True
            if last:
                del self.left[s]
                self.finished(s)
        return went

    async def settle(self) -> None:
        """Everything the router answers to what was sent so far: a PING, and the frames up to its ACK."""
        self._pings += 1
        token = self._pings.to_bytes(8, "big")
        self.wire.send(frames.frame(frames.PING, 0, 0, token))
        for _ in range(100_000):
            f = await self.step()
            if f.kind == frames.PING and f.flags & frames.ACK and f.payload == token:
                return
        raise AssertionError("no PING ACK")

    async def until_shut(self) -> None:
        """Send while the windows let us, until the router lets nothing more through."""
        for _ in range(10_000):
            while self.pump():
                await self.wire.writer.drain()
            await self.settle()
            if not self.pump():
                return
        raise AssertionError("the windows never shut")
