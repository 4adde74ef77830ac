"""Open-loop latency: requests at a fixed rate, each timed from when it was *due* (no coordinated omission).

Sends ``POST /predict`` with a random ``X-User-Id`` at `--rate` requests per second for
`--seconds`, over a pool of keep-alive connections (a request waits for a free one, and
that wait counts), and prints the latency percentiles. Run it against the upstream
directly and through the router, interleaved, to read what the router adds::

    .venv/bin/python bench/open_loop.py --url http://127.0.0.1:18081/predict --rate 1000 --seconds 10

Everything goes to the URL given (use 127.0.0.1); the loop is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from urllib.parse import urlsplit

BODY = b'{"inputs": [1, 2, 3]}'


async def _one(
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]], request: bytes, due: float
) -> float:
    reader, writer = await pool.get()
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode())
        return time.perf_counter() - due
    finally:
        pool.put_nowait((reader, writer))


async def run(url: str, rate: float, seconds: float, connections: int) -> list[float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    rng = random.Random(1)
    path = (parts.path or "/").encode()
    start = time.perf_counter() + 0.1
    n = int(rate * seconds)
    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request = (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nX-User-Id: user-%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, host.encode(), rng.randrange(1_000_000), len(BODY), BODY)
        )
        tasks.append(asyncio.create_task(_one(pool, request, due)))
    latencies = await asyncio.gather(*tasks)
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    return sorted(latencies)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    lat = asyncio.run(run(args.url, args.rate, args.seconds, args.connections))
    ms = {q: 1000 * percentile(lat, q) for q in (0.5, 0.9, 0.99, 0.999)}
    print(
        f"{args.label or args.url}: n={len(lat)} rate={args.rate:g}/s p50={ms[0.5]:.2f}ms p90={ms[0.9]:.2f}ms "
        f"p99={ms[0.99]:.2f}ms p99.9={ms[0.999]:.2f}ms max={1000 * lat[-1]:.2f}ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
