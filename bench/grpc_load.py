"""gRPC load: unary raw-bytes calls, closed loop (N in flight) or open loop (a fixed rate).

Each call is `--method` (the OIP's ``ModelInfer`` by default) with a ~100-byte message and a random ``x-user-id``
metadata value (1..1,000,000), as the HTTP harness sends ``X-User-Id``. Prints one JSON
line: calls, errors, calls/s and the latency percentiles in milliseconds.

- closed loop (``--concurrency N``): N calls always in flight over ``--channels``
  HTTP/2 connections, for ``--seconds``; latency is per call (queueing included);
- open loop (``--rate R``): calls started at R per second, each timed from when it was
  *due* (no coordinated omission), for ``--seconds``.

Also ``--serve PORT[,PORT]``: the upstream for the bench, a grpc.aio echo server per port
(the message back, prefixed with the port's arm letter). Everything on 127.0.0.1; loops
bounded by --seconds.

    python bench/grpc_load.py --target 127.0.0.1:50051 --concurrency 64 --seconds 10
    python bench/grpc_load.py --target 127.0.0.1:50051 --rate 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time

import grpc
import grpc.aio
from h2_load import percentiles

#: The default method: the OIP's inference call, which the router proxies as unary.
METHOD = "/inference.GRPCInferenceService/ModelInfer"
MESSAGE = b'{"inputs": [1, 2, 3], "model": "recsys", "padding": "' + b"x" * 40 + b'"}'


def _metadata() -> tuple[tuple[str, str], ...]:
    return (("x-user-id", f"user-{random.randint(1, 1_000_000)}"),)


async def closed_loop(
    target: str, *, concurrency: int, channels: int, seconds: float, method: str
) -> dict[str, object]:
    pool = [
        grpc.aio.insecure_channel(target, options=(("grpc.use_local_subchannel_pool", 1),)) for _ in range(channels)
    ]
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        call = pool[i % channels].unary_unary(method)
        while (start := time.perf_counter()) < stop:
            try:
                await call(MESSAGE, metadata=_metadata(), timeout=10)
                latencies.append(time.perf_counter() - start)
            except grpc.aio.AioRpcError:
                errors += 1

    for channel in pool:  # a target that is gone fails the run instead of holding it
        await asyncio.wait_for(channel.channel_ready(), 30)
    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    for channel in pool:
        await channel.close()
    return {"calls": len(latencies), "errors": errors, "calls_per_s": round(len(latencies) / elapsed, 1),
            **percentiles(latencies)}  # fmt: skip


async def open_loop(target: str, *, rate: float, channels: int, seconds: float, method: str) -> dict[str, object]:
    pool = [
        grpc.aio.insecure_channel(target, options=(("grpc.use_local_subchannel_pool", 1),)) for _ in range(channels)
    ]
    for channel in pool:
        await asyncio.wait_for(channel.channel_ready(), 30)
    calls = [channel.unary_unary(method) for channel in pool]
    latencies: list[float] = []
    errors = 0

    async def one(i: int, due: float) -> None:
        nonlocal errors
        try:
            await calls[i % channels](MESSAGE, metadata=_metadata(), timeout=10)
            latencies.append(time.perf_counter() - due)
        except grpc.aio.AioRpcError:
            errors += 1

    tasks = []
    began = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = began + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for channel in pool:
        await channel.close()
    return {"calls": len(latencies), "errors": errors, "rate": rate, **percentiles(latencies)}


class _Echo(grpc.GenericRpcHandler):
    def __init__(self, tag: bytes) -> None:
        self.tag = tag

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        tag = self.tag

        async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return tag + request

        return grpc.unary_unary_rpc_method_handler(unary)


async def serve(ports: list[int]) -> None:
    servers = []
    for i, port in enumerate(ports):
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_Echo(b"ab"[i : i + 1] + b":"),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servers.append(server)
    print("serving", ports, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        await server.stop(None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="host:port to call")
    p.add_argument("--serve", help="run the echo upstream on these ports (PORT[,PORT]) until SIGTERM")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rate", type=float, help="open loop at this many calls per second")
    p.add_argument("--channels", type=int, default=4, help="HTTP/2 connections (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--method", default=METHOD, help="the method path to call (default: %(default)s)")
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve([int(port) for port in args.serve.split(",")]))
        return
    if args.rate:
        run = open_loop(args.target, rate=args.rate, channels=args.channels, seconds=args.seconds, method=args.method)
    else:
        run = closed_loop(
            args.target, concurrency=args.concurrency, channels=args.channels, seconds=args.seconds, method=args.method
        )
    result = asyncio.run(run)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
