"""The gRPC listener against real raw-bytes gRPC servers (tests/router/grpc/servers.py): every
kind of call, pass-through of status, details and metadata, the router's own failures, sticky assignment."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import grpc
import grpc.aio
import pytest

from abrouter.router.connections import Limits
from tests.router.grpc.conftest import MakeGrpcRouter
from tests.router.grpc.servers import FAIL_TRAILERS, UNARY_PATHS, EchoServer, free_port

UNIT = (("x-user-id", "u42"),)


def _method(channel: grpc.aio.Channel, name: str, kind: str = "unary_unary", shape: str = "any"):  # type: ignore[no-untyped-def]
    """A method of the echo servers; `shape` "known-unary" picks one the router proxies as unary."""
    return getattr(channel, kind)(UNARY_PATHS[shape][name] if kind == "unary_unary" else f"/test.Echo/{name}")


#: Every unary test runs on both of the router's paths.
both_shapes = pytest.mark.parametrize("shape", list(UNARY_PATHS))


def _md(metadata) -> dict:  # type: ignore[no-untyped-def]
    return dict(metadata or ())


@both_shapes
async def test_a_unary_call_is_answered_by_the_assigned_variant_tagged_with_upstream_metadata_and_trailers(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], shape: str
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    async with r.channel() as channel:
        call = _method(channel, "Unary", shape=shape)(b"hello", metadata=UNIT, timeout=10)
        reply = await call
        head, trailers = _md(await call.initial_metadata()), _md(await call.trailing_metadata())
    variant = head["x-ab-variant"]
    assert reply == f"{variant}:hello".encode()
    assert head["served-by"] == variant
    assert head["x-ab-experiment"] == r.spec["name"]
    assert head["x-ab-request-id"]
    assert trailers["trailer-x"] == "t"
    assert await call.code() is grpc.StatusCode.OK


@both_shapes
@pytest.mark.parametrize("code", ["NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL"])
async def test_an_upstream_status_details_and_trailers_pass_through_unchanged(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], code: str, shape: str
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    async with r.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _method(channel, "Fail", shape=shape)(code.encode(), metadata=UNIT, timeout=10)
    e = err.value
    variant = _md(e.initial_metadata())["x-ab-variant"]
    assert e.code() is grpc.StatusCode[code]
    assert e.details() == f"{variant} refuses: no such thing"
    assert [(k, v) for k, v in e.trailing_metadata() or () if k.startswith("why")] == list(FAIL_TRAILERS)
    await r.settle()
    errors = {v: r.router.metrics.errors.get((r.spec["name"], v, "upstream_5xx"), 0) for v in ("control", "candidate")}
    assert sum(errors.values()) == (1 if code in ("UNAVAILABLE", "INTERNAL") else 0)


@both_shapes
async def test_the_callers_metadata_reaches_the_upstream_with_x_forwarded_for_and_binary_values(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], shape: str
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    sent = (*UNIT, ("traceparent", "00-abc-def-01"), ("token-bin", b"\x00\xff"), ("x-ab-force-variant", "control"))
    async with r.channel() as channel:
        seen = dict(json.loads(await _method(channel, "Metadata", shape=shape)(b"", metadata=sent, timeout=10)))
    assert seen["x-user-id"] == "u42"
    assert seen["traceparent"] == "00-abc-def-01"
    assert seen["token-bin"] == "00ff"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "x-ab-force-variant" not in seen
    assert 0 < seen["time-remaining"] < 10.5  # (grpc-timeout rounds up) the caller's deadline reached the upstream call
    async with r.channel() as channel:  # no deadline: the experiment's read timeout (5 s) is the call's
        seen = dict(json.loads(await _method(channel, "Metadata", shape=shape)(b"", metadata=UNIT)))
    assert 0 < seen["time-remaining"] < 5.5


async def test_streams_of_every_kind_are_relayed_message_by_message_in_order(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    async with r.channel() as channel:
        call = _method(channel, "ServerStream", "unary_stream")(b"50", metadata=UNIT, timeout=10)
        variant = _md(await call.initial_metadata())["x-ab-variant"]
        assert [m async for m in call] == [f"{variant}:{i}".encode() for i in range(50)]

        async def parts():  # type: ignore[no-untyped-def]
            for part in (b"a", b"b", b"c"):
                yield part

        joined = await _method(channel, "ClientStream", "stream_unary")(parts(), metadata=UNIT, timeout=10)
        assert joined == f"{variant}:a+b+c".encode()

        # Ping-pong: each answer must come back before the next message is sent.
        bidi = _method(channel, "Bidi", "stream_stream")(metadata=UNIT, timeout=10)
        for i in range(5):
            await bidi.write(b"%d" % i)
            assert await bidi.read() == f"{variant}:{i}".encode()
        await bidi.done_writing()
        assert await bidi.read() is grpc.aio.EOF
        assert await bidi.code() is grpc.StatusCode.OK


async def test_the_first_message_of_a_stream_arrives_before_the_upstream_finished(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    async with r.channel() as channel:
        call = _method(channel, "Wait", "unary_stream")(b"", metadata=UNIT, timeout=30)
        variant = _md(await call.initial_metadata())["x-ab-variant"]
        first = await call.read()  # a proxy that buffered the stream would wait here until the server gave up
        assert first == f"{variant}:first".encode()
        echo_servers[variant].release.set()
        assert await call.read() == f"{variant}:last".encode()
        assert await call.code() is grpc.StatusCode.OK
    assert echo_servers[variant].released_in_time == [True]


@both_shapes
async def test_an_unreachable_upstream_is_unavailable_naming_the_variant_and_an_error_of_it(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], shape: str
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    r = await make_grpc_router(
        {"control": echo_servers["control"].address, "candidate": dead}, {"control": 0, "candidate": 100}
    )
    async with r.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _method(channel, "Unary", shape=shape)(b"x", metadata=UNIT, timeout=10)
    e = err.value
    assert e.code() is grpc.StatusCode.UNAVAILABLE
    assert e.details() == "variant 'candidate': upstream unavailable"
    assert dead not in (e.details() or "")
    head = _md(e.initial_metadata())
    assert head["x-ab-variant"] == "candidate" and head["x-ab-request-id"]
    assert r.router.metrics.errors[(r.spec["name"], "candidate", "unavailable")] == 1
    await r.settle()
    (stratum,) = (await r.strata()).values()
    assert stratum.variant == "candidate" and stratum.metrics["errors"].sum == 1


@both_shapes
async def test_an_upstream_past_the_callers_deadline_is_deadline_exceeded_an_error_of_the_variant(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], shape: str
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, {"control": 100, "candidate": 0})
    async with r.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _method(channel, "Slow", shape=shape)(b"30", metadata=UNIT, timeout=1.0)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(500):  # the router's side of the call ends on its own clock
        if r.router.metrics.errors.get((r.spec["name"], "control", "timeout")):
            break
        await asyncio.sleep(0.02)
    assert r.router.metrics.errors[(r.spec["name"], "control", "timeout")] == 1, (
        dict(r.router.metrics.errors),
        dict(r.router.metrics.requests),
    )
    for _ in range(500):  # the caller's deadline reached the upstream: its call was cancelled too
        if echo_servers["control"].cancelled:
            break
        await asyncio.sleep(0.02)
    assert echo_servers["control"].cancelled == 1
    await r.settle()
    (stratum,) = (await r.strata()).values()
    assert stratum.metrics["errors"].sum == 1


@both_shapes
async def test_a_callers_cancel_is_not_an_error_of_the_variant(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], shape: str
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, {"control": 100, "candidate": 0})
    async with r.channel() as channel:
        call = _method(channel, "Slow", shape=shape)(b"30", metadata=UNIT, timeout=60)
        for _ in range(500):
            if UNARY_PATHS[shape]["Slow"] in echo_servers["control"].calls:
                break
            await asyncio.sleep(0.02)
        call.cancel()
        for _ in range(500):
            if echo_servers["control"].cancelled:
                break
            await asyncio.sleep(0.02)
    assert echo_servers["control"].cancelled == 1  # the cancel reached the upstream
    for _ in range(500):
        if r.router.metrics.requests.get((r.spec["name"], "control", "4xx")):
            break
        await asyncio.sleep(0.02)
    assert r.router.metrics.requests[(r.spec["name"], "control", "4xx")] == 1  # logged as 499
    assert not r.router.metrics.errors


async def test_units_stick_to_their_variant_and_split_by_weight(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, {"control": 20, "candidate": 80})
    seen: dict[str, set[str]] = {}
    async with r.channel() as channel:
        unary = _method(channel, "Unary")
        for round_ in range(2):
            for i in range(200):
                call = unary(b"x", metadata=(("x-user-id", f"user-{i}"),), timeout=10)
                await call
                seen.setdefault(f"user-{i}", set()).add(_md(await call.initial_metadata())["x-ab-variant"])
            del round_
    assert all(len(variants) == 1 for variants in seen.values())
    counts = Counter(next(iter(v)) for v in seen.values())
    assert 110 <= counts["candidate"] <= 190  # 160 expected; binomial sd 5.7
    # The same assignment as over HTTP: the router's one assigner, by unit.
    async with r.client.post("/predict", headers={"X-User-Id": "user-7"}) as resp:
        assert resp.headers["X-AB-Variant"] in seen["user-7"]


async def test_the_connection_cap_and_the_idle_deadline_hold_on_the_grpc_listener(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    limits = Limits(max_connections=1, idle_s=0.5)
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, limits=limits)
    own_connection = (("grpc.use_local_subchannel_pool", 1),)
    async with r.channel() as first, grpc.aio.insecure_channel(r.grpc_address, options=own_connection) as second:
        assert await _method(first, "Unary")(b"a", metadata=UNIT, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:  # beyond the cap: closed at once
            await _method(second, "Unary")(b"b", metadata=UNIT, timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        for _ in range(500):  # idle past idle_s: the router closes the first connection
            if first.get_state() is not grpc.ChannelConnectivity.READY:
                break
            await asyncio.sleep(0.02)
        assert first.get_state() is not grpc.ChannelConnectivity.READY
        assert await _method(second, "Unary")(b"b", metadata=UNIT, timeout=10, wait_for_ready=True)


async def test_a_stream_to_a_slow_reader_holds_the_upstream_back(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    """HTTP/2 flow control on both legs, and one message at a time in between: a caller that
    stops reading stops the upstream too, instead of the router buffering the whole stream."""
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, {"control": 100, "candidate": 0})
    total = 200  # 200 MiB: far beyond the windows of two HTTP/2 connections and the router's one message
    upstream = echo_servers["control"]
    async with r.channel() as channel:
        call = channel.unary_stream("/test.Echo/BigStream")(b"%d" % total, metadata=UNIT, timeout=120)
        assert len(await call.read()) == 1 << 20
        sent, still = -1, 0
        while still < 25:  # until the upstream has been held still for 25 looks in a row
            await asyncio.sleep(0.02)
            still = still + 1 if upstream.big_sent == sent else 0
            sent = upstream.big_sent
        assert sent < total // 2, f"the upstream sent {sent} MiB to a caller that read 1"
        received = 1
        while await call.read() is not grpc.aio.EOF:  # reading again lets the rest through
            received += 1
        assert received == total and upstream.big_sent == total


async def test_the_qa_override_picks_the_variant_and_an_unknown_one_is_invalid_argument_naming_it(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, allow_force_variant=True)
    async with r.channel() as channel:
        unary = _method(channel, "Unary")
        for variant in ("control", "candidate"):
            assert await unary(b"q", metadata=(*UNIT, ("x-ab-force-variant", variant)), timeout=10) == (
                f"{variant}:q".encode()
            )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(b"q", metadata=(*UNIT, ("x-ab-force-variant", "third")), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "X-AB-Force-Variant: unknown variant 'third'; known: control, candidate"
    await r.settle()
    assert await r.strata() == {}  # overrides are not exposures, a refusal is nothing


async def test_the_specs_exposure_rules_match_a_calls_method_path(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    rules = [{"method": "POST", "path": "/test.Echo/Unary"}]
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, exposures=rules)
    async with r.channel() as channel:
        for _ in range(3):
            await _method(channel, "Unary")(b"x", metadata=UNIT, timeout=10)
            await _method(channel, "Metadata")(b"", metadata=UNIT, timeout=10)
    await r.settle()
    assert sum(s.exposures for s in (await r.strata()).values()) == 3


async def test_a_call_no_experiment_matches_is_not_found_and_a_match_on_the_method_path_takes_it(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, match={"path": "/test.Echo/Un*"})
    async with r.channel() as channel:
        assert (await _method(channel, "Unary")(b"m", metadata=UNIT, timeout=10)).endswith(b":m")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _method(channel, "Metadata")(b"", metadata=UNIT, timeout=10)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no experiment serves POST /test.Echo/Metadata"


async def test_compressed_calls_are_answered_as_the_upstream_answers_them(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    message = b"squeeze me " * 200
    async with grpc.aio.insecure_channel(r.grpc_address, compression=grpc.Compression.Gzip) as channel:
        call = _method(channel, "Unary")(message, metadata=UNIT, timeout=10)
        variant = _md(await call.initial_metadata())["x-ab-variant"]
        assert await call == f"{variant}:".encode() + message
        bidi = _method(channel, "Bidi", "stream_stream")(metadata=UNIT, timeout=10)
        for i in range(3):
            await bidi.write(message + b"%d" % i)
            assert await bidi.read() == f"{variant}:".encode() + message + b"%d" % i
        await bidi.done_writing()
        assert await bidi.code() is grpc.StatusCode.OK
