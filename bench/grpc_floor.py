"""The floor of a gRPC proxy in Python: grpc.aio forwarding unary raw bytes and nothing else.

No assignment, no tags, no event log, no deadline or failure handling: one upstream, the
caller's metadata passed on. `bench/grpc_bench.py` runs it beside the router, so the
router's own cost (the exchange, the event log) reads as the gap between the two, and
grpc.aio's per-call cost as the gap between this and Envoy.

    python bench/grpc_floor.py --port 50060 --upstream 127.0.0.1:50051
"""

from __future__ import annotations

import argparse

import grpc
import grpc.aio

from abrouter.router.serving import new_loop


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        call = self.channel.unary_unary(details.method)

        async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return await call(request, metadata=context.invocation_metadata(), timeout=context.time_remaining())

        return grpc.unary_unary_rpc_method_handler(unary)


async def serve(port: int, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Forward(channel),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="host:port")
    args = p.parse_args()
    loop = new_loop()  # uvloop, as the router's
    try:
        loop.run_until_complete(serve(args.port, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
