"""How long `Gateway.find` takes with 1, 50 and 1,000 experiments (issue 16: the match must
not scale with their number). Pure CPU, no sockets: microseconds per request.

    .venv/bin/python bench/gateway_match.py [--experiments 1,50,1000] [--repeat 20000]

Cases: the model in an Open Inference Protocol path; the model in an OpenAI-style JSON
body (~300 bytes, "model" after "messages"); a request matched by path glob while every
other experiment matches by model (the body holds no model, so it is scanned and the
path experiments are tried in turn).
"""

from __future__ import annotations

import argparse
import json
import time

from abrouter.contract.model import Match
from abrouter.router.matching import Gateway

HEADERS = [("Host", "gateway.local"), ("X-User-Id", "user-42"), ("Content-Type", "application/json")]
CHAT = json.dumps(
    {"messages": [{"role": "user", "content": "recommend me something " * 8}], "model": "m-0", "temperature": 0}
).encode()
PLAIN = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()


def gateway(n: int) -> Gateway:
    matches = {f"exp-{i}": Match(model=f"m-{i}") for i in range(n)}
    matches["by-path"] = Match(path="/predict")
    return Gateway(matches)


def per_call_us(g: Gateway, target: str, body: bytes | None, repeat: int) -> float:
    find = g.find
    start = time.perf_counter()
    for _ in range(repeat):
        find(target, HEADERS, body)
    return (time.perf_counter() - start) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default="1,50,1000", help="comma-separated counts (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=20_000, help="calls per case (default: %(default)s)")
    args = parser.parse_args()
    counts = [int(x) for x in args.experiments.split(",")]
    cases = [
        ("OIP path /v2/models/m-0/infer", "/v2/models/m-0/infer", PLAIN),
        ("JSON body model (chat, 300 B)", "/v1/chat/completions", CHAT),
        ("path /predict, body without model", "/predict", PLAIN),
    ]
    print("| case | " + " | ".join(f"{n} experiments (µs)" for n in counts) + " |")
    print("|---|" + "---|" * len(counts))
    gateways = {n: gateway(n) for n in counts}
    for label, target, body in cases:
        for g in gateways.values():  # the right experiment, or the test is meaningless
            assert g.find(target, HEADERS, body) is not None, label
        cells = [f"{per_call_us(gateways[n], target, body, args.repeat):.2f}" for n in counts]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
