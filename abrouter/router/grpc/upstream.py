"""The upstream leg of the gRPC adapter: one grpc.aio channel per variant endpoint.

A channel is one HTTP/2 connection (reconnected by the library) that multiplexes every
call to that ``host:port``; it is made on first use and kept for the process (endpoints
are a handful, and a spec reload that names a new one adds a channel). Messages pass as
bytes: no (de)serialiser, no generated code.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

#: The largest message either way: protobuf's own limit (2 GiB - 1), as Triton's client sets it.
#: gRPC's default of 4 MiB would refuse the tensors model servers exchange.
MAX_MESSAGE = 2**31 - 1

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)


class Channels:
    """The channels to the variants' gRPC endpoints, by address."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._methods: dict[tuple[str, str], grpc.aio.StreamStreamMultiCallable[bytes, bytes]] = {}
        self._unary: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return channel

    def method(self, address: str, method: str) -> grpc.aio.StreamStreamMultiCallable[bytes, bytes]:
        """A raw-bytes stream-stream callable for `method` on `address`; one shape fits all four kinds."""
        key = (address, method)
        callable_ = self._methods.get(key)
        if callable_ is None:
            callable_ = self.channel(address).stream_stream(method, request_serializer=None, response_deserializer=None)
            if len(self._methods) >= 4096:  # bounded: callers choose the method names
                self._methods.clear()
            self._methods[key] = callable_
        return callable_

    def unary(self, address: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        """A raw-bytes unary callable for `method` on `address` (a method known to be unary)."""
        key = (address, method)
        callable_ = self._unary.get(key)
        if callable_ is None:
            callable_ = self.channel(address).unary_unary(method, request_serializer=None, response_deserializer=None)
            if len(self._unary) >= 4096:
                self._unary.clear()
            self._unary[key] = callable_
        return callable_

    def connected(self, address: str) -> bool:
        """Whether the channel to `address` holds a working connection now (not connecting, not failing)."""
        channel = self._channels.get(address)
        return channel is not None and channel.get_state(try_to_connect=False) is grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._methods.clear()
        self._unary.clear()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
