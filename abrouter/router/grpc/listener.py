"""The grpc.aio gRPC listener (`--grpc-server grpcio`; the default is our own, `h2server`): beside the HTTP one.

The client limits of `abrouter.router.connections.Limits` apply as the gRPC library's own
server arguments, since grpc.aio hands no connection to Python: the cap on open connections
(``grpc.max_allowed_incoming_connections``: beyond it a new connection is closed), the
handshake deadline of a new connection (``--header-timeout``) and the idle deadline between
calls (``--idle-timeout``, sent as a GOAWAY, which clients take as "reconnect"). A message
that stops arriving is not cut: a stream may be quiet for long; the call's deadline bounds it.
`GrpcListener.close` stops accepting calls, lets those in flight finish (up to a timeout),
cancels the rest, then closes the upstream channels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import grpc.aio

from abrouter.router.connections import Limits
from abrouter.router.grpc.server import ProxyHandler
from abrouter.router.grpc.upstream import MAX_MESSAGE, Channels
from abrouter.router.state import Router

log = logging.getLogger("abrouter.listener")


def server_options(limits: Limits) -> list[tuple[str, int]]:
    """The grpc.aio server's arguments for these client limits (see the module docstring)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.server_handshake_timeout_ms", max(1, round(limits.header_s * 1000))),
        ("grpc.max_connection_idle_ms", max(1, round(limits.idle_s * 1000))),
    ]


@dataclass
class GrpcListener:
    server: grpc.aio.Server
    port: int
    channels: Channels

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting calls, let in-flight ones finish (at most `timeout_s`), cancel the rest."""
        try:
            await self.server.stop(timeout_s)
        finally:
            await self.channels.close()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(router: Router, *, host: str = "127.0.0.1", port: int = 0) -> GrpcListener:
    """Serve `router` over gRPC on host:port (0: any free port). Raises OSError if the port cannot be bound."""
    channels = Channels()
    server = grpc.aio.server(options=server_options(router.guard.limits))
    server.add_generic_rpc_handlers((ProxyHandler(router, channels),))
    try:
        bound = server.add_insecure_port(_address(host, port))
    except RuntimeError:  # grpc's "Failed to bind"; its reason went to its own log line
        bound = 0
    if bound == 0:
        raise OSError(
            f"cannot listen for gRPC on {_address(host, port)}: the address is in use (another abrouter serve?) "
            "or not this machine's; move it with --grpc-port"
        )
    await server.start()
    log.info("gRPC listener on %s", _address(host, bound))
    return GrpcListener(server=server, port=bound, channels=channels)
