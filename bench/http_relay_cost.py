"""The router's CPU per HTTP/1.1 request on its own path, in process, without sockets.

`bench/run_router_bench.sh` measures requests per core end to end against Envoy; on a
shared 2-core machine its figures move with everything else's load. This measures the
same code (`http.server.HttpProtocol`, the stream driver, the httptools upstream client
`HttptoolsTransport` and its `Connection`, `Exchange`, the metrics) deterministically:
the bytes wrk sends (``bench/wrk/post.lua``'s POST /predict, a distinct X-User-Id per
request) are fed to `--connections` server connections' ``data_received``, one request
each per batch; the requests the router writes upstream are answered by nginx's bytes
(the shared harness's upstream: a 100-byte JSON with Content-Length) fed to the upstream
connections' ``data_received``; the event loop (uvloop, as the router's; ``--asyncio`` for
asyncio's own) turns as the path needs (a task per request, or none). The exposure log
keeps nothing (its batching and encoding are measured elsewhere). No syscalls: what is
left is Python, C extensions and the loop.

Prints microseconds of CPU (process time) per request, the median of ``--rounds``; to
compare two builds, run it on each (`bench/in_tree.py`), alternating:

    .venv/bin/python bench/http_relay_cost.py --requests 6400
    .venv/bin/python bench/in_tree.py /tmp/before17 bench/http_relay_cost.py --requests 6400
    .venv/bin/python bench/http_relay_cost.py --profile   # cProfile of one round, top functions
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import statistics
import time
from typing import Any

import yaml

from abrouter.contract import experiment as model
from abrouter.router import serving
from abrouter.router.h2 import native
from abrouter.router.http.server import HttpProtocol
from abrouter.router.routing import RoutingTable
from abrouter.router.state import Lane, Lanes, Router, request_ids
from abrouter.router.upstream.httpclient import HttptoolsTransport
from abrouter.router.upstream.httpconn import Connection
from abrouter.router.upstream.transport import TimeoutConfig

SPEC = """
name: http-cost
unit: {header: X-User-Id}
variants:
  - {name: control, upstream: "http://127.0.0.1:9", weight: 50}
  - {name: candidate, upstream: "http://127.0.0.1:9", weight: 50}
"""
BODY = b'{"model":"demo","inputs":{"text":"the quick brown fox","max_tokens":16},"request_id":"bench-0001"}'
ANSWER = b'{"id":"pred-000001","model":"model-a","upstream":"a","label":"positive","scores":[0.91,0.09]}\n'
#: nginx 1.22's response to the harness's POST /predict (`return 200` with `add_header`).
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 01:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n"
    b"X-Upstream: a\r\n\r\n%b" % (len(ANSWER), ANSWER)
)


def request(user: str) -> bytes:
    """As wrk.format builds it (post.lua)."""
    return (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"X-User-Id: %b\r\nContent-Length: %d\r\n\r\n%b" % (user.encode(), len(BODY), BODY)
    )


class Wire:
    """A transport that keeps nothing: counts what the server connection writes."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        raise RuntimeError("the router closed a client connection")

    def abort(self) -> None:
        raise RuntimeError("the router aborted a client connection")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Upstream(Wire):
    """An upstream connection's transport: each request written is answered with `RESPONSE` (by `answer`)."""

    def __init__(self, conn: Connection, asked: list[Connection]) -> None:
        super().__init__()
        self.conn, self.asked = conn, asked

    def write(self, data: bytes) -> None:
        self.asked.append(self.conn)

    def writelines(self, data: list[bytes]) -> None:
        self.asked.append(self.conn)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Exposures:
    def __init__(self) -> None:
        self.n = 0

    def record_exposure(self, e: object) -> None:
        self.n += 1


def one_round(requests: int, connections: int, seed: int, *, uvloop: bool = True) -> float:
    """CPU seconds per request: `requests` in batches of one per server connection; on the router's loop
    (uvloop, `serving.new_loop`) or asyncio's."""
    loop = serving.new_loop() if uvloop else asyncio.new_event_loop()
    try:
        experiment = model.parse(yaml.safe_load(SPEC))
        transport = HttptoolsTransport(TimeoutConfig(1.0, 30.0), idle_timeout_s=1e9)
        log = Exposures()
        lane = Lane(
            table=RoutingTable(experiment=experiment, since=time.time()),
            eventlog=log,  # type: ignore[arg-type]
            ids=request_ids(b"bench", experiment),
            transport=transport,
        )
        router = Router(lanes=Lanes([lane]))
        pool, _ = transport._route("http://127.0.0.1:9")
        asked: list[Connection] = []
        for _ in range(connections):  # as many idle upstream connections as requests in flight
            conn = Connection(pool, loop)
            conn.connection_made(Upstream(conn, asked))  # type: ignore[arg-type]
            pool.put(conn)
        servers = []
        for _ in range(connections):
            server = HttpProtocol(router, loop)
            server.connection_made(Wire())  # type: ignore[arg-type]
            servers.append(server)
        rng = random.Random(seed)
        batches = [
            [request(f"user-{rng.randint(1, 1_000_000)}") for _ in range(connections)]
            for _ in range(requests // connections)
        ]
        spent = 0.0

        async def drive() -> None:
            nonlocal spent
            for batch in batches:
                start = time.process_time()
                for server, data in zip(servers, batch, strict=True):
                    server.data_received(data)
                answered = 0
                while answered < connections:
                    if not asked:
                        await asyncio.sleep(0)  # a turn of the loop: tasks write upstream, or respond
                        continue
                    ready = asked[:]
                    asked.clear()
                    for conn in ready:
                        conn.data_received(RESPONSE)
                    answered += len(ready)
                for _ in range(3):  # the answers go back to the clients (at most a task's two steps)
                    await asyncio.sleep(0)
                spent += time.process_time() - start

        loop.run_until_complete(drive())
        done = len(batches) * connections
        written = sum(server.transport.writes for server in servers)  # type: ignore[union-attr]
        if log.n != done or written != done:
            raise RuntimeError(f"{done} requests: {log.n} exposures, {written} responses written")
        return spent / done
    finally:
        loop.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--connections", type=int, default=64, help="server connections, one request each per batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--asyncio", action="store_true", help="asyncio's own event loop instead of uvloop")
    p.add_argument("--profile", action="store_true", help="cProfile one round and print the top functions")
    args = p.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(one_round, args.requests, args.connections, args.seed, uvloop=not args.asyncio)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    rounds = range(args.rounds)
    per_request = [one_round(args.requests, args.connections, args.seed + i, uvloop=not args.asyncio) for i in rounds]
    loop = "asyncio" if args.asyncio else "uvloop"
    print(
        f"HTTP/1.1 request through the router ({native.mode()}, {loop}): "
        f"{statistics.median(per_request) * 1e6:.2f} µs "
        f"of CPU per request (median of {args.rounds} rounds of {args.requests}; "
        f"min {min(per_request) * 1e6:.2f}, max {max(per_request) * 1e6:.2f})"
    )


if __name__ == "__main__":
    main()
