"""The router's CPU per unary gRPC call on its own HTTP/2 path, in process, without sockets.

`bench/grpc_bench.py` measures calls per core end to end, against Envoy; on a shared
2-core machine its figures move with the load of everything else and with how many
calls each read carries. This measures the same code path (`h2server.GrpcConnection`,
`relay.Call`, `h2upstream`, `Exchange`, the metrics) deterministically: bytes a gRPC
client would send are fed to the server connection's ``data_received``, `--batch` calls
per read; the bytes the relay writes upstream are answered by a fake upstream (a head,
one message, ``grpc-status: 0`` trailers, all indexed after the first call as grpc.aio's
are) fed to the upstream connection's ``data_received``; the event loop turns once per
batch to flush. The exposure log is an in-memory list (the event log's own cost, its
batching and encoding, is left out: it is measured elsewhere). No syscalls: what is left
is Python and the event loop's callbacks.

Prints microseconds of CPU (process time) per call, the median of ``--rounds``:

    .venv/bin/python bench/grpc_relay_cost.py --calls 20000 --batch 4
    .venv/bin/python bench/grpc_relay_cost.py --profile   # cProfile of one round, top functions
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import statistics
import time
from typing import Any, ClassVar

import yaml

from abrouter.contract import experiment as model
from abrouter.router.eventlog.events import Exposure
from abrouter.router.grpc import h2server
from abrouter.router.grpc.h2upstream import Pool, Pools, UpstreamConnection
from abrouter.router.h2 import frames, hpack
from abrouter.router.routing import RoutingTable
from abrouter.router.state import Lane, Lanes, Router, request_ids

SPEC = """\
name: grpc-cost
unit: {header: X-User-Id}
variants:
  - {name: control, upstream: "http://127.0.0.1:9", grpc_upstream: "127.0.0.1:1001", weight: 50}
  - {name: candidate, upstream: "http://127.0.0.1:9", grpc_upstream: "127.0.0.1:1002", weight: 50}
"""
METHOD = "/inference.GRPCInferenceService/ModelInfer"
MESSAGE = b'{"inputs": [1, 2, 3], "model": "recsys", "padding": "' + b"x" * 40 + b'"}'
BIG_WINDOW = 2**31 - 1 - frames.DEFAULT_WINDOW


class Wire:
    """A transport that keeps what is written."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Exposures:
    def __init__(self) -> None:
        self.n = 0

    def record_exposure(self, e: Exposure) -> None:
        self.n += 1


def _grpc_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class Upstream:
    """A fake upstream server on one `UpstreamConnection`: answers every stream the relay opened on it.

    Its answers are the same bytes for a stream id every time (built once; the relay's writes
    are dropped unread), so the harness costs little beside the code measured.
    """

    answers: ClassVar[dict[int, bytes]] = {}

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn, self.wire = conn, Wire()
        conn.connection_made(self.wire)  # type: ignore[arg-type]
        settings = frames.settings({frames.INITIAL_WINDOW_SIZE: 2**31 - 1, frames.MAX_CONCURRENT_STREAMS: 1 << 20})
        conn.data_received(settings + frames.window_update(0, BIG_WINDOW))

    def answer(self) -> int:
        self.wire.out.clear()
        ids = list(self.conn.streams)
        if ids:
            self.conn.data_received(b"".join(self.answers.get(i) or self._answer(i) for i in ids))
        return len(ids)

    def _answer(self, stream_id: int) -> bytes:
        # As grpc.aio's server writes them: literals with indexing on a connection's first stream, indexed after.
        encoder = _IndexingEncoder()
        blocks = [encoder.encode(fields) for fields in (_HEAD, _TRAILERS, _HEAD, _TRAILERS)]
        head, tail = blocks[:2] if stream_id == 1 else blocks[2:]
        answer = self.answers[stream_id] = b"".join(
            (
                frames.headers(stream_id, head, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME),
                frames.data(stream_id, _grpc_message(b"A" + MESSAGE)),
                frames.headers(stream_id, tail, end_stream=True, max_frame=frames.DEFAULT_MAX_FRAME),
            )
        )
        return answer


_HEAD = [(":status", "200"), ("content-type", "application/grpc")]
_TRAILERS = [("grpc-status", "0"), ("grpc-message", "")]


class _IndexingEncoder:
    """Fields of the static table indexed, others sent as literals with incremental indexing the first time and
    indexed after (as grpc-c does)."""

    def __init__(self) -> None:
        self.table: list[tuple[str, str]] = []  # oldest first

    def encode(self, fields: list[tuple[str, str]]) -> bytes:
        out = bytearray()
        for field in fields:
            if field in hpack.STATIC_TABLE:
                out += hpack.encode_integer(hpack.STATIC_TABLE.index(field) + 1, 7, 0x80)
            elif field in self.table:
                index = 62 + len(self.table) - 1 - self.table.index(field)
                out += hpack.encode_integer(index, 7, 0x80)
            else:
                name, value = (part.encode("latin-1") for part in field)
                out += b"\x40" + hpack.encode_integer(len(name), 7, 0) + name
                out += hpack.encode_integer(len(value), 7, 0) + value
                self.table.append(field)
        return bytes(out)


def _request_block(encoder: _IndexingEncoder, user: str) -> bytes:
    fixed = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", METHOD),
        (":authority", "127.0.0.1:50051"),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-python/1.85.3 grpc-c/45.0.0 (linux; chttp2)"),
        ("grpc-accept-encoding", "identity, deflate, gzip"),
    ]
    # The unit id changes every call: a literal without indexing, as grpc-c sends unknown values.
    user_field = b"\x00" + hpack.encode_integer(9, 7, 0) + b"x-user-id" + hpack.encode_integer(len(user), 7, 0)
    return encoder.encode(fixed) + user_field + user.encode() + b"\x00\x0cgrpc-timeout\x089999999u"


def setup(loop: asyncio.AbstractEventLoop) -> tuple[h2server.GrpcConnection, Wire, list[Upstream], Exposures]:
    experiment = model.parse(yaml.safe_load(SPEC))
    log = Exposures()
    lane = Lane(
        table=RoutingTable(experiment=experiment, since=time.time()),
        eventlog=log,  # type: ignore[arg-type]
        ids=request_ids(b"bench", experiment),
        transport=None,  # type: ignore[arg-type]  # the HTTP transport: not used by gRPC calls
    )
    router = Router(lanes=Lanes([lane]))
    pools = Pools(loop)
    upstreams = []
    for variant in experiment.variants:
        address = variant.grpc_upstream
        assert address is not None
        pool = pools.pools[address] = Pool(address, loop)
        conn = UpstreamConnection(loop, pool)
        pool.connections.append(conn)
        upstreams.append(Upstream(conn))
    server = h2server.GrpcConnection(router, pools, loop, set())
    wire = Wire()
    server.connection_made(wire)  # type: ignore[arg-type]
    settings = frames.settings({frames.INITIAL_WINDOW_SIZE: 2**31 - 1})
    server.data_received(frames.PREFACE + settings + frames.window_update(0, BIG_WINDOW))
    return server, wire, upstreams, log


def one_round(calls: int, batch: int, seed: int, pause_s: float = 0.0, evict: bytearray | None = None) -> float:
    """CPU seconds per call for `calls` calls, `batch` per read.

    With `pause_s`, the loop sleeps that long between reads (other processes run meanwhile) and with `evict`
    that buffer is written through between reads (the caches then hold it, not the router's code and data):
    only the reads' own work is timed, as an open-loop load's one call per wake-up is."""
    loop = asyncio.new_event_loop()
    try:
        server, wire, upstreams, log = setup(loop)
        for upstream in upstreams:  # the upstream's answers, built before the clock starts
            for stream_id in range(1, 2 * calls + 2, 2):
                upstream.answers.get(stream_id) or upstream._answer(stream_id)
        rng = random.Random(seed)
        encoder = _IndexingEncoder()
        message = _grpc_message(MESSAGE)
        stream_id = 1
        reads = []
        for _ in range(calls // batch):
            chunk = []
            for _ in range(batch):
                block = _request_block(encoder, f"user-{rng.randint(1, 1_000_000)}")
                chunk.append(frames.headers(stream_id, block, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME))
                chunk.append(frames.data(stream_id, message, end_stream=True))
                stream_id += 2
            reads.append(b"".join(chunk))

        spent = 0.0

        async def drive() -> int:
            nonlocal spent
            answered = 0
            for data in reads:
                if pause_s:
                    await asyncio.sleep(pause_s)
                if evict is not None:
                    evict[::64] = bytes(len(evict[::64]))  # one write per cache line
                start = time.process_time()
                server.data_received(data)
                await asyncio.sleep(0)  # a turn of the loop: the relay's writes upstream go out
                for upstream in upstreams:
                    answered += upstream.answer()
                await asyncio.sleep(0)  # the answers go back to the caller
                wire.out.clear()
                spent += time.process_time() - start
            return answered

        answered = loop.run_until_complete(drive())
        done = len(reads) * batch
        if answered != done or log.n != done or server.streams:
            raise RuntimeError(f"{answered} answered, {log.n} exposures, {len(server.streams)} streams open")
        return spent / done
    finally:
        loop.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=4, help="calls per read (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--uvloop", action="store_true", help="uvloop's event loop (the router's)")
    p.add_argument("--pause-ms", type=float, default=0.0, help="sleep between reads (one call per wake-up)")
    p.add_argument("--evict-kb", type=int, default=0, help="write this much memory between reads (untimed)")
    p.add_argument("--profile", action="store_true", help="cProfile one round: the top functions by own time")
    p.add_argument("--sort", default="tottime", help="with --profile: tottime or cumulative")
    args = p.parse_args()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    one_round(min(args.calls, 2000), args.batch, 0)  # warm-up: imports, caches
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        one_round(args.calls, args.batch, 1)
        profiler.disable()
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(40)
        return
    evict = bytearray(args.evict_kb * 1024) if args.evict_kb else None
    per_call = [one_round(args.calls, args.batch, seed, args.pause_ms / 1000, evict) for seed in range(args.rounds)]
    print(
        f"{statistics.median(per_call) * 1e6:.1f} µs of CPU per call (median of {args.rounds} rounds of "
        f"{args.calls} calls, {args.batch} per read, {args.pause_ms:g} ms apart, "
        f"{args.evict_kb} KiB evicted between; min {min(per_call) * 1e6:.1f}, max {max(per_call) * 1e6:.1f})"
    )


if __name__ == "__main__":
    main()
