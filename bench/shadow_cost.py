"""[shadow] What a shadow costs the live path, per request the control serves: CPU only, no sockets.

The driver's extra work for shadow traffic (`abrouter.router.shadow`): deciding which
shadows a request is copied to (`wanted`: the unit's share by a hash), hashing the live
response body as it goes, building the `Copy` and queueing it without waiting. Measured
on one `Exchange` per request (assignment, request id, tags, the exposure into a
disabled event log), without and with a shadow at 100%, so the difference is the
shadow's share of the driver's own work. Sending the copies happens in the workers, off
the live path, and is not measured here.

    .venv/bin/python bench/shadow_cost.py                  # 200,000 requests per case
    .venv/bin/python bench/shadow_cost.py --requests 20000 --body 16384
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from abrouter.contract import experiment as spec
from abrouter.router import shadow
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.exchange import Exchange, Incoming
from abrouter.router.routing import RoutingTable
from abrouter.router.state import Lane, Lanes, Router, request_ids


def experiment(with_shadow: bool) -> spec.Experiment:
    variants: list[dict[str, Any]] = [
        {"name": "control", "upstream": "http://a", "weight": 100},
        {"name": "candidate", "upstream": "http://b", "weight": 0},
    ]
    if with_shadow:
        variants[1].update(shadow=True)
    return spec.parse({"name": "bench", "unit": {"header": "X-User-Id"}, "variants": variants})


def run(e: spec.Experiment, *, requests: int, body: bytes) -> float:
    """Microseconds of CPU per request."""
    lane = Lane(
        table=RoutingTable(experiment=e, since=time.time()),
        eventlog=DisabledEventLog(),
        ids=request_ids(b"bench", e),
        transport=None,  # type: ignore[arg-type]  # never called
    )
    router = Router(lanes=Lanes([lane]))
    pool = shadow.ShadowPool(experiment=e.name, transport=None, eventlog=lane.eventlog, metrics=router.metrics)  # type: ignore[arg-type]
    heads = [("Host", "x"), ("X-User-Id", "")]
    start = time.process_time()
    for i in range(requests):
        heads[1] = ("X-User-Id", f"user-{i % 50_000}")
        incoming = Incoming(method="POST", target="/predict", headers=heads, peer="127.0.0.1", scheme="http")
        ex = Exchange.start(router, incoming, now=time.time())
        shadows = shadow.wanted(ex)  # what `stream.proxy` adds
        live = shadow.digest() if shadows else None
        ex.received(200)
        if live is not None:
            live.update(body)
        ex.finish(now=time.time())
        if live is not None:
            pool.offer(shadow.Copy.of(ex, shadows, b"{}", live.digest()))
            pool._queue.get_nowait()  # a worker's take, without sending
            pool._bytes = 0
    return (time.process_time() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--body", type=int, default=1024, help="bytes of the live response body hashed")
    args = parser.parse_args()
    body = b"x" * args.body

    async def both() -> tuple[float, float]:
        return run(experiment(False), requests=args.requests, body=body), run(
            experiment(True), requests=args.requests, body=body
        )

    without, with_ = asyncio.run(both())
    print(f"| case ({args.requests:,} requests, {args.body:,}-byte live body) | CPU µs per request |")
    print("|---|---|")
    print(f"| exchange, no shadow in the spec | {without:.2f} |")
    print(f"| exchange + a shadow at 100% (wanted, hash, copy, queue) | {with_:.2f} |")
    print(f"| the shadow's share | {with_ - without:.2f} |")


if __name__ == "__main__":
    main()
