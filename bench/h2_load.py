"""A gRPC load generator and echo upstream on raw HTTP/2 under uvloop: fast enough to saturate a proxy.

`bench/grpc_load.py` (grpc.aio) tops out near 2,800 unary calls/s on one core with its echo
upstream beside it, so in `bench/grpc_bench.py`'s closed loop no proxy got past ~20% of its
core. This one speaks HTTP/2 itself, with the router's frame builders and HPACK decoder
(`abrouter.router.h2.frames`, `.hpack`), and does no more per call than the wire needs:

- the client (``--target``): ``--connections`` h2c connections, ``--concurrency`` unary calls
  in flight over them (closed loop) for ``--seconds``. Each call is `--method` with the same
  ~100-byte message as `grpc_load.py`, a random ``x-user-id`` (``user-1`` .. ``user-1000000``)
  and ``grpc-timeout: 10S``, as grpc.aio sends them. A call counts as answered only with
  ``:status`` 200, ``grpc-status`` 0 in its trailers and the message echoed (with an arm's tag);
  anything else (another status, a reset, a wrong payload, a call still open 10 s after the
  end) is an error. Every header block is decoded (HPACK's dynamic table must follow Envoy's).
  Everything a read calls for leaves in one write per connection;
- the echo upstream (``--serve PORT[,PORT]``): each request's message back, prefixed with the
  port's arm letter (``a:``, ``b:``), as `grpc_load.py --serve` does; its header blocks are not
  decoded (nothing in them is needed, and our encoder never indexes, so no table to follow).

Flow control both ways: each side advertises the largest windows and replenishes the
connection's as data arrives; what it sends waits for the peer's windows.

With ``--cpu-pid PID`` the client also reports that process's CPU seconds (user + system)
over exactly the measured window (connections up to the last answer), so a proxy's share of
its core is not diluted by the generator's start-up.

    python bench/h2_load.py --serve 50051,50052
    python bench/h2_load.py --target 127.0.0.1:50051 --concurrency 256 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import struct
import time
from collections import deque
from pathlib import Path

from abrouter.router.h2 import frames, hpack
from abrouter.router.serving import new_loop

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MESSAGE = b'{"inputs": [1, 2, 3], "model": "recsys", "padding": "' + b"x" * 40 + b'"}'
#: The answers an echo may give: the message back behind its arm's tag, gRPC-framed.
ECHOES = frozenset(b"\x00" + struct.pack(">L", len(MESSAGE) + 2) + tag + MESSAGE for tag in (b"a:", b"b:"))
HEAD = frames.HEAD
#: Our receive windows: the most there is; the connection's is topped up once this much arrived.
REPLENISH_AT = 1 << 30
OPENING = frames.settings({frames.INITIAL_WINDOW_SIZE: frames.MAX_WINDOW, frames.ENABLE_PUSH: 0}) + (
    frames.window_update(0, frames.MAX_WINDOW - frames.DEFAULT_WINDOW)
)
CALL_TIMEOUT_S = 10.0


class _Peer(asyncio.Protocol):
    """Frames in and out, settings, pings and windows: what both sides share."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        self.out: list[bytes] = []
        self.received = 0
        self.send_window = frames.DEFAULT_WINDOW
        self.peer_initial = frames.DEFAULT_WINDOW
        self.peer_max_streams = 2**31 - 1
        #: Frames of DATA waiting for the connection's window: (size, frame).
        self.waiting: deque[tuple[int, bytes]] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        at, size = self.start(data), len(data)
        if at < 0:  # the client's preface not whole yet
            self.rest = data
            return
        while size - at >= 9:
            high, low, kind, flags, stream_id = HEAD.unpack_from(data, at)
            end = at + 9 + (high << 8 | low)
            if end > size:
                break
            payload = data[at + 9 : end]
            at = end
            if kind == frames.DATA:
                self.received += len(payload)
                self.on_data(stream_id, frames.unpad(payload, flags) if flags & frames.PADDED else payload, flags)
            elif kind == frames.HEADERS:
                if flags & (frames.PADDED | frames.PRIORITY_FLAG):
                    payload = frames.header_block(payload, flags)
                if not flags & frames.END_HEADERS:
                    raise RuntimeError("a header block in CONTINUATION frames: not expected of a small call")
                self.on_headers(stream_id, payload, flags)
            else:
                self.control(kind, flags, stream_id, payload)
        self.rest = data[at:]
        if self.received >= REPLENISH_AT:
            self.out.append(frames.window_update(0, self.received))
            self.received = 0
        self.flush()

    def start(self, data: bytes) -> int:
        return 0

    def control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == frames.SETTINGS and not flags & frames.ACK:
            for key, value in frames.parse_settings(payload):
                if key == frames.INITIAL_WINDOW_SIZE:
                    self.peer_initial = value
                elif key == frames.MAX_CONCURRENT_STREAMS:
                    self.peer_max_streams = value
            self.out.append(frames.SETTINGS_ACK)
            self.settled()
        elif kind == frames.PING and not flags & frames.ACK:
            self.out.append(frames.ping_ack(payload))
        elif kind == frames.WINDOW_UPDATE and stream_id == 0:
            self.send_window += frames.parse_window_update(payload)
            while self.waiting and self.waiting[0][0] <= self.send_window:
                size, frame = self.waiting.popleft()
                self.send_window -= size
                self.out.append(frame)
        elif kind == frames.RST_STREAM:
            self.on_reset(stream_id, frames.parse_code(payload))
        elif kind == frames.GOAWAY:
            self.on_goaway()

    def send_data(self, stream_id: int, payload: bytes, *, end_stream: bool) -> None:
        """DATA (no larger than any peer's smallest frame, no larger than a stream's window: ours are small)."""
        frame = frames.data(stream_id, payload, end_stream=end_stream)
        size = len(payload)
        if self.waiting or size > self.send_window:
            self.waiting.append((size, frame))
            return
        self.send_window -= size
        self.out.append(frame)

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def settled(self) -> None:
        """The peer's SETTINGS arrived."""

    def on_headers(self, stream_id: int, block: bytes, flags: int) -> None: ...

    def on_data(self, stream_id: int, payload: bytes, flags: int) -> None: ...

    def on_reset(self, stream_id: int, code: int) -> None: ...

    def on_goaway(self) -> None: ...


# --- the client ---


class Run:
    """One closed-loop run: its calls, its errors and their latencies."""

    def __init__(self, *, method: str, authority: str, per_connection: int, seconds: float) -> None:
        encoder = hpack.Encoder()
        request = [(":method", "POST"), (":scheme", "http"), (":path", method), (":authority", authority)]
        request += [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "10S")]
        self.head = encoder.encode(request)
        self.message = b"\x00" + struct.pack(">L", len(MESSAGE)) + MESSAGE
        self.per_connection = per_connection
        self.seconds = seconds
        self.stop = float("inf")
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.open = 0
        self.done = asyncio.get_running_loop().create_future()

    def error(self, why: str) -> None:
        self.errors[why] = self.errors.get(why, 0) + 1

    def call_ended(self) -> None:
        self.open -= 1
        if self.open == 0 and not self.done.done():
            self.done.set_result(None)

    def headers(self) -> bytes:
        """The request's header block: the common fields, then a random x-user-id (a literal, never indexed)."""
        user = b"user-%d" % random.randint(1, 1_000_000)
        return self.head + b"\x00\x09x-user-id" + bytes((len(user),)) + user


class _Call:
    __slots__ = ("data", "ok_head", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.ok_head = False
        self.data = b""


class Client(_Peer):
    """One connection, `run.per_connection` calls in flight until `run.stop`."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run
        self.calls: dict[int, _Call] = {}
        self.next_id = 1
        self.decoder = hpack.Decoder()
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.out.append(frames.PREFACE + OPENING)
        self.flush()

    def settled(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def begin(self) -> None:
        """The closed loop's first calls (the rest start as calls end)."""
        for _ in range(min(self.run.per_connection, self.peer_max_streams)):
            self.call(time.perf_counter())
        self.flush()

    def call(self, now: float) -> None:
        run = self.run
        stream_id = self.next_id
        self.next_id += 2
        self.calls[stream_id] = _Call(now)
        run.open += 1
        self.out.append(frames.headers(stream_id, run.headers(), end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME))
        self.send_data(stream_id, run.message, end_stream=True)

    def on_headers(self, stream_id: int, block: bytes, flags: int) -> None:
        fields = self.decoder.decode(block)
        call = self.calls.get(stream_id)
        if call is None:
            return
        if not flags & frames.END_STREAM:
            call.ok_head = (":status", "200") in fields
            return
        if not call.ok_head and (":status", "200") not in fields:  # no head before, nor in a trailers-only answer
            self.end(stream_id, call, "HTTP status " + _value(fields, ":status"))
        elif ("grpc-status", "0") not in fields:
            self.end(stream_id, call, "grpc-status " + _value(fields, "grpc-status"))
        elif call.data not in ECHOES:
            self.end(stream_id, call, "not the message echoed")
        else:
            self.end(stream_id, call, "")

    def on_data(self, stream_id: int, payload: bytes, flags: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            call.data += payload
            if flags & frames.END_STREAM:
                self.end(stream_id, call, "no trailers")

    def on_reset(self, stream_id: int, code: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            self.end(stream_id, call, f"RST_STREAM {code}")

    def on_goaway(self) -> None:
        for stream_id, call in list(self.calls.items()):
            self.end(stream_id, call, "GOAWAY")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.on_goaway()

    def end(self, stream_id: int, call: _Call, error: str) -> None:
        del self.calls[stream_id]
        run = self.run
        now = time.perf_counter()
        if error:
            run.error(error)
        else:
            run.latencies.append(now - call.started)
        if now < run.stop and not self.closed:
            self.call(now)
        run.call_ended()


def _value(fields: list[tuple[str, str]], name: str) -> str:
    return next((value for key, value in fields if key == name), "none")


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "p999_ms": at(0.999)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (every thread of it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop(
    target: str, *, concurrency: int, connections: int, seconds: float, method: str, cpu_pid: int | None
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    host, _, port = target.rpartition(":")
    run = Run(method=method, authority=target, per_connection=max(1, concurrency // connections), seconds=seconds)
    clients: list[Client] = []
    for _ in range(connections):
        _, client = await asyncio.wait_for(loop.create_connection(lambda: Client(run), host, int(port)), 30)
        clients.append(client)
    for client in clients:  # a target that never settles fails the run instead of holding it
        await asyncio.wait_for(client.ready, 30)
    cpu0 = cpu_seconds(cpu_pid) if cpu_pid else 0.0
    began = time.perf_counter()
    run.stop = began + seconds
    for client in clients:
        client.begin()
    try:
        await asyncio.wait_for(run.done, seconds + CALL_TIMEOUT_S)
    except TimeoutError:
        for client in clients:
            run.errors["open after the end"] = run.errors.get("open after the end", 0) + len(client.calls)
    elapsed = time.perf_counter() - began
    result: dict[str, object] = {
        "calls": len(run.latencies),
        "errors": sum(run.errors.values()),
        "calls_per_s": round(len(run.latencies) / elapsed, 1),
        **percentiles(run.latencies),
    }
    if run.errors:
        result["error_kinds"] = run.errors
    if cpu_pid:
        result["proxy_cpu_s"] = round(cpu_seconds(cpu_pid) - cpu0, 3)
        result["window_s"] = round(elapsed, 3)
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return result


# --- the echo upstream ---


class Echo(_Peer):
    """One connection to the echo upstream: each request's message back behind `tag`."""

    HEAD_BLOCK = hpack.Encoder().encode([(":status", "200"), ("content-type", "application/grpc")])
    TRAILERS_BLOCK = hpack.Encoder().encode([("grpc-status", "0")])

    def __init__(self, tag: bytes) -> None:
        super().__init__()
        self.tag = tag
        self.requests: dict[int, bytes] = {}
        self.preface = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.out.append(OPENING)
        self.flush()

    def start(self, data: bytes) -> int:
        if not self.preface:
            return 0
        if len(data) < len(frames.PREFACE):
            return -1
        if not data.startswith(frames.PREFACE):
            raise RuntimeError("not an HTTP/2 client preface")
        self.preface = False
        return len(frames.PREFACE)

    def on_headers(self, stream_id: int, block: bytes, flags: int) -> None:
        if stream_id in self.requests:
            return  # the request's trailers: none expected
        self.requests[stream_id] = b""
        if flags & frames.END_STREAM:
            self.answer(stream_id)

    def on_data(self, stream_id: int, payload: bytes, flags: int) -> None:
        if stream_id in self.requests:
            self.requests[stream_id] += payload
            if flags & frames.END_STREAM:
                self.answer(stream_id)

    def on_reset(self, stream_id: int, code: int) -> None:
        self.requests.pop(stream_id, None)

    def answer(self, stream_id: int) -> None:
        body = self.requests.pop(stream_id)[5:]
        message = b"\x00" + struct.pack(">L", len(body) + 2) + self.tag + body
        self.out.append(
            frames.headers(stream_id, self.HEAD_BLOCK, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME)
        )
        self.send_data(stream_id, message, end_stream=False)
        self.out.append(
            frames.headers(stream_id, self.TRAILERS_BLOCK, end_stream=True, max_frame=frames.DEFAULT_MAX_FRAME)
        )


async def serve(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for i, port in enumerate(ports):
        tag = b"ab"[i : i + 1] + b":"
        servers.append(await loop.create_server(lambda tag=tag: Echo(tag), "127.0.0.1", port, backlog=1024))
    print("serving", ports, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="host:port to call")
    p.add_argument("--serve", help="run the echo upstream on these ports (PORT[,PORT]) until SIGTERM")
    p.add_argument("--concurrency", type=int, default=256, help="calls in flight (default: %(default)s)")
    p.add_argument("--connections", type=int, default=4, help="HTTP/2 connections (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--method", default=METHOD, help="the method path to call (default: %(default)s)")
    p.add_argument("--cpu-pid", type=int, help="report this process's CPU seconds over the measured window")
    args = p.parse_args()
    loop = new_loop()
    try:
        if args.serve:
            loop.run_until_complete(serve([int(port) for port in args.serve.split(",")]))
            return
        run = closed_loop(
            args.target,
            concurrency=args.concurrency,
            connections=args.connections,
            seconds=args.seconds,
            method=args.method,
            cpu_pid=args.cpu_pid,
        )
        print(json.dumps(loop.run_until_complete(run)), flush=True)
    finally:
        loop.close()


if __name__ == "__main__":
    main()
