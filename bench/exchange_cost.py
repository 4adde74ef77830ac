"""CPU per request of the exchange alone (`Exchange.start` .. `finish`), the part the HTTP and gRPC paths share.

An HTTP/1.1-like request (six headers, the unit in X-User-Id, a distinct unit per request),
two 50/50 variants, an exposure log that keeps nothing; no sockets, no event loop. To compare
two checkouts, run it with each on PYTHONPATH:

    .venv/bin/python bench/exchange_cost.py --requests 20000
    PYTHONPATH=/tmp/main-tree .venv/bin/python bench/exchange_cost.py --requests 20000
"""

from __future__ import annotations

import argparse
import statistics
import time

import yaml

from abrouter.contract import experiment as model
from abrouter.router.exchange import Exchange, Incoming
from abrouter.router.routing import RoutingTable
from abrouter.router.state import Lane, Lanes, Router, request_ids

SPEC = """
name: http-cost
unit: {header: X-User-Id}
variants:
  - {name: control, upstream: "http://127.0.0.1:9", weight: 50}
  - {name: candidate, upstream: "http://127.0.0.1:9", weight: 50}
"""
HEADERS = [
    ("Host", "127.0.0.1:8080"),
    ("User-Agent", "wrk"),
    ("Accept", "*/*"),
    ("Content-Type", "application/json"),
    ("Content-Length", "40"),
]


class Exposures:
    def record_exposure(self, e: object) -> None:
        pass


def one_round(router: Router, requests: list[Incoming]) -> float:
    """CPU seconds per request."""
    start = time.process_time()
    for incoming in requests:
        ex = Exchange.start(router, incoming, now=1.7e9, body=b'{"x": 1}')
        ex.upstream_headers()
        ex.received(200)
        ex.response_headers([("Content-Type", "application/json"), ("Content-Length", "10")])
        ex.first_byte()
        ex.finish(now=1.7e9)
    return (time.process_time() - start) / len(requests)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    experiment = model.parse(yaml.safe_load(SPEC))
    lane = Lane(
        table=RoutingTable(experiment=experiment, since=time.time()),
        eventlog=Exposures(),  # type: ignore[arg-type]
        ids=request_ids(b"bench", experiment),
        transport=None,  # type: ignore[arg-type]  # not used: no request is sent
    )
    router = Router(lanes=Lanes([lane]))
    requests = [
        Incoming("POST", "/predict", [*HEADERS, ("X-User-Id", f"user-{i}")], "127.0.0.1", "http")
        for i in range(args.requests)
    ]
    per_request = [one_round(router, requests) for _ in range(args.rounds)]
    print(
        f"exchange start..finish: {statistics.median(per_request) * 1e6:.2f} µs of CPU per request "
        f"(median of {args.rounds} rounds of {args.requests})"
    )


if __name__ == "__main__":
    main()
