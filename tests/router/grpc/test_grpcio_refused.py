"""``--grpc-server grpcio``: what grpc-core does itself with a call its upstream refused unprocessed, as the
README says (the own server's retries are tested in test_h2_conformance.py, against the same upstream).

grpc-core retries the calls above a GOAWAY's last stream id on a new connection (a rolling restart
costs no call); a RST_STREAM REFUSED_STREAM it passes on as UNAVAILABLE (grpcio 1.85). These follow
the library: if an upgrade changes either, the README's gRPC section changes with it.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from abrouter.router.h2 import frames
from tests.router.grpc.conftest import MakeGrpcRouter
from tests.router.grpc.test_h2_conformance import UNIT, WAIT_S, UpstreamWire, _echo, _echo_all, _failed_call, upstream

pytestmark = pytest.mark.parametrize("grpc_server", ["grpcio"])


async def test_grpc_core_sends_the_calls_above_an_upstreams_goaway_again_on_a_new_connection(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        if len(u.connections) > 1:
            await _echo_all(wire)
            return
        first, *_ = sorted(await wire.requests(3), key=lambda q: q.stream_id)
        wire.send(frames.goaway(first.stream_id, frames.NO_ERROR))
        _echo(wire, first)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            method = channel.unary_unary("/test.Quirky/Call")
            sent = [b"a", b"b", b"c"]
            answers = await asyncio.wait_for(
                asyncio.gather(*(method(m, metadata=UNIT, timeout=20) for m in sent)), WAIT_S
            )
        assert answers == sent
        assert len(u.connections) == 2
        assert not r.router.metrics.errors


async def test_grpc_core_passes_a_refused_stream_on_as_unavailable(make_grpc_router: MakeGrpcRouter) -> None:
    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        wire.send(frames.rst_stream(req.stream_id, frames.REFUSED_STREAM))
        await _echo_all(wire)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            err = await _failed_call(channel)
        assert err.code() is grpc.StatusCode.UNAVAILABLE
