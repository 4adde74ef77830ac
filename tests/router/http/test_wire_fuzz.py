"""Fuzzing the HTTP/1.1 server over real sockets (issue 14): malformed and mutated requests.

Each case sends valid requests mutated byte by byte (flips, CR/LF/NUL/space inserts,
framing headers spliced in, cuts, repeats), sometimes several pipelined, on a fresh
connection, and half-closes it. Whatever the router sent back must be whole HTTP/1.1
responses, none a 5xx (a client's bytes are never the router's or a variant's
failure), or nothing at all: a clean close. After every case a good request is
answered 200, and at the end no variant has an error and nothing was logged as one.

Hypothesis drives the cases from a worker thread; each case runs on the test's event
loop (where the router lives) through `run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.router.conftest import RouterUnderTest
from tests.router.http import raw

T = TypeVar("T")
#: The server preface of our answer to an HTTP/2 client: an empty SETTINGS frame.
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

OUTCOME = b'{"unit": "u1", "metric": "revenue", "value": 1}'
VALID = [
    raw.request("GET", "/echo?a=1&b=%20"),
    raw.request("POST", "/v2/models/m/infer", body=b'{"inputs": [1, 2, 3]}'),
    raw.head("POST", "/echo", "Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    raw.request("GET", "/abrouter/healthz"),
    raw.request("POST", "/abrouter/outcomes", body=OUTCOME),
    raw.request("GET", "http://elsewhere:1/echo", headers="Connection: keep-alive\r\nExpect: 100-continue\r\n"),
    raw.request("GET", "/echo", version="1.0"),
]
INSERTS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b"\xff",
    b"\r\n ",
    b"Content-Length: 3\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
    b"Expect: 100-continue\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"X" * 9000,
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "repeat"]))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from(INSERTS) | st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


cases = st.one_of(
    mutated(),
    st.lists(mutated(), min_size=2, max_size=3).map(b"".join),  # pipelined
    st.binary(max_size=200),
)


async def answers(data: bytes) -> list[raw.Response]:
    """The whole responses in `data`; fails on anything else (a cut or garbled response)."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out = []
    while not reader.at_eof():
        out.append(await raw.read_response(reader))
    return out


UPGRADE_WITH_BODY = (
    raw.head("POST", "/echo", "Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n") + b"hi"
)
#: Sent after the case's bytes when the client does not half-close: answered, then the router closes.
SENTINEL = raw.request("GET", "/echo?sentinel", headers="Connection: close\r\n")


async def one_case(r: RouterUnderTest, data: bytes, half_close: bool) -> None:
    reader, writer = await raw.connect(r.client.port)
    try:
        if half_close:
            writer.write(data)
            writer.write_eof()  # the router sees the end of what this client will send
        else:  # the requests are served: a mutated one that waits for more is cut by a deadline
            writer.write(data + SENTINEL)
        await writer.drain()
        sent_back = await raw.read_to_close(reader)
    except ConnectionError:
        sent_back = b""  # the router closed before it read everything: a clean close
    finally:
        writer.close()
    if data.startswith(b"PRI") and sent_back.startswith(H2_SETTINGS):
        return  # taken for HTTP/2 (tests/router/http/test_wire.py checks that answer)
    for response in await answers(sent_back):
        assert response.status < 500, (data, sent_back)
    good = await r.client.get("/echo?good", headers={"X-User-Id": "u1"})
    assert good.status == 200, (data, await good.text())
    good.release()


async def test_mutated_requests_get_a_4xx_or_a_clean_close_and_the_router_keeps_serving(
    limited: RouterUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    r = limited
    loop = asyncio.get_running_loop()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=cases, half_close=st.booleans())
    @example(data=b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", half_close=False)
    @example(
        data=b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        half_close=False,
    )
    @example(data=b"\r\n\r\n\r\n", half_close=False)
    @example(data=UPGRADE_WITH_BODY, half_close=False)
    @example(data=b"GET /\xff\xfe HTTP/1.1\r\n\r\n", half_close=False)
    def case(data: bytes, half_close: bool) -> None:
        run(one_case(r, data, half_close))
        ran.append(data)

    ran: list[bytes] = []
    await asyncio.to_thread(case)
    assert len(ran) >= 200
    assert sum(r.router.metrics.bad_requests.values()) > 0  # the generator does reach the refusals
    assert dict(r.router.metrics.errors) == {}
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info], caplog.text
