"""[shadow] Shadow traffic over real sockets: copies reach the shadow, never delay or change the client's answer.

The control and the shadow are real aiohttp servers on 127.0.0.1; the router is the one
`abrouter serve` runs, with a real Redis. A shadow that "sleeps" blocks on an event the
test sets only after the client has its answer, so nothing here measures time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from aiohttp import web

from abrouter.analysis import report, service
from abrouter.analysis.sinks.file import FileSink
from abrouter.contract import experiment as spec
from abrouter.contract import keys
from abrouter.contract.model import Variant
from abrouter.router import shadow
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.exchange import Incoming
from abrouter.router.metrics import ProxyMetrics
from abrouter.router.routing import RoutingTable
from abrouter.router.runtime import make_transport
from abrouter.router.upstream.transport import TimeoutConfig
from tests.router.conftest import MakeRouter


@dataclass
class Seen:
    """What a model server received, and a gate that holds its answers to /gate."""

    requests: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    #: Requests being answered now (a held one stays counted until it is answered or cut).
    pending: int = 0


SEEN = web.AppKey("seen", Seen)


def model(name: str, *, hold: bool) -> web.Application:
    """/predict answers the same for every model; /differ names the model; /gate waits for the test if `hold`."""

    async def handle(request: web.Request) -> web.Response:
        seen = request.app[SEEN]
        seen.requests.append((request.method, request.path_qs, await request.read(), dict(request.headers)))
        seen.arrived.set()
        seen.pending += 1
        try:
            if request.path == "/gate" and hold:
                await seen.gate.wait()
        finally:
            seen.pending -= 1
        body = {"model": name} if request.path == "/differ" else {"score": 0.5}
        return web.json_response(body)

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[SEEN] = Seen()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def started(aiohttp_server: Any, name: str) -> tuple[str, Seen]:
    server = await aiohttp_server(model(name, hold=name == "next"))
    return str(server.make_url("")).rstrip("/"), server.app[SEEN]


async def until(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def variants(control: str, next_: str, candidate: str | None = None, percent: float = 100) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "control", "upstream": control, "weight": 50}]
    if candidate:
        out.append({"name": "candidate", "upstream": candidate, "weight": 50})
    out.append({"name": "next", "upstream": next_, "weight": 0, "shadow": True, "shadow_percent": percent})
    return out


async def test_copies_of_the_controls_requests_reach_the_shadow_and_are_recorded_as_its_arm(
    make_router: MakeRouter, aiohttp_server: Any
) -> None:
    (control, _), (candidate, _), (nxt, seen) = [await started(aiohttp_server, n) for n in ("control", "cand", "next")]
    r = await make_router(variants=variants(control, nxt, candidate))
    served: dict[str, int] = {}
    for i in range(40):
        path = "/differ" if i % 4 == 0 else "/predict"
        resp = await r.client.post(path, headers={"X-User-Id": f"u{i}"}, data=b'{"x": 1}')
        assert resp.status == 200
        variant = resp.headers["X-AB-Variant"]
        assert variant in ("control", "candidate")  # the shadow never answers
        served[variant] = served.get(variant, 0) + 1
        if path == "/differ":
            assert await resp.json() == {"model": "control" if variant == "control" else "cand"}
        resp.release()

    await until(lambda: len(seen.requests) == served["control"], "the copies")
    method, _, body, headers = seen.requests[0]
    assert (method, body, headers["X-AB-Shadow"]) == ("POST", b'{"x": 1}', "1")
    await r.settle()
    strata = await r.strata()
    replies, compared = strata[(1, "next" + keys.SHADOW_SUFFIX)], strata[(1, "next" + keys.AGREEMENT_SUFFIX)]
    assert replies.exposures == compared.exposures == served["control"]
    assert replies.units == served["control"]  # one derived unit per live unit
    assert replies.metrics["errors"].sum == 0
    differ = sum(1 for _, path, _, _ in seen.requests if path == "/differ")
    assert differ > 0 and compared.metrics["errors"].sum == differ  # a disagreement is an error there
    assert (1, "next") not in strata  # never assigned
    # The control's own sums are untouched: its units once each, no multiple exposures.
    assert strata[(1, "control")].units == strata[(1, "control")].exposures == served["control"]
    assert not [v for _, v in strata if v.endswith(keys.MULTIPLE_SUFFIX)]
    metrics = await (await r.client.get("/abrouter/metrics")).text()
    assert f'abrouter_shadow_sent_total{{experiment="{r.spec["name"]}",variant="next"}} {served["control"]}' in metrics


async def test_a_shadow_that_sleeps_does_not_hold_the_clients_answer(
    make_router: MakeRouter, aiohttp_server: Any
) -> None:
    (control, _), (nxt, seen) = [await started(aiohttp_server, n) for n in ("control", "next")]
    # A read timeout longer than the test: a router that waited for the shadow would not answer.
    r = await make_router(variants=variants(control, nxt), timeouts={"connect": 1, "read": 300})
    for n, user in enumerate(("a", "b"), start=1):
        resp = await asyncio.wait_for(r.client.post("/gate", headers={"X-User-Id": user}, data=b"{}"), 60)
        assert resp.status == 200 and await resp.json() == {"score": 0.5}
        resp.release()
        await until(lambda: len(seen.requests) == n, "the shadow's copy")  # noqa: B023 (n of this iteration)
    # Both clients had their answers while the shadow still holds both copies.
    assert seen.pending == 2
    seen.gate.set()
    await until(lambda: seen.pending == 0, "the shadow's answers")
    await r.settle()
    assert (await r.strata())[(1, "next" + keys.SHADOW_SUFFIX)].exposures == 2


async def test_a_streamed_request_body_is_not_copied_but_counted(make_router: MakeRouter, aiohttp_server: Any) -> None:
    (control, _), (nxt, seen) = [await started(aiohttp_server, n) for n in ("control", "next")]
    r = await make_router(variants=variants(control, nxt))
    resp = await r.client.post("/predict", headers={"X-User-Id": "u"}, data=b"x" * (300 * 1024))
    assert resp.status == 200
    resp.release()
    assert r.router.metrics.shadow_dropped == {(r.lane.name, "streamed_body"): 1}
    assert seen.requests == []


def test_a_units_share_is_fixed_and_uniform() -> None:
    units = [keys.unit_hash(f"user-{i}") for i in range(4000)]
    chosen = sum(1 for u in units if shadow.share(u, "next") < 25)
    assert 900 < chosen < 1100  # 25% of 4000, ± 5.8 standard deviations
    assert [shadow.share(u, "next") for u in units[:10]] == [shadow.share(u, "next") for u in units[:10]]


async def test_copies_over_the_queue_or_left_at_shutdown_are_dropped_and_counted(aiohttp_server: Any) -> None:
    url, seen = await started(aiohttp_server, "next")
    transport = make_transport("httptools", TimeoutConfig(1.0, 30.0))
    metrics = ProxyMetrics()
    pool = shadow.ShadowPool(
        experiment="e", transport=transport, eventlog=DisabledEventLog(), metrics=metrics, size=1, workers=1
    )
    copy = shadow.Copy(
        shadows=(Variant(name="next", upstream=url, weight=0, shadow=True),),
        incoming=Incoming(method="POST", target="/gate", headers=[("Host", "x")], peer="127.0.0.1", scheme="http"),
        body=b"{}",
        model_at=None,
        request_id="r",
        unit_hash="0" * 16,
        anonymous=False,
        epoch=1,
        status=200,
        digest=b"",
    )
    pool.start()
    try:
        pool.offer(copy)
        await until(seen.arrived.is_set, "the first copy")  # the one worker holds it
        pool.offer(copy)  # queued
        pool.offer(copy)  # the queue is full
        assert metrics.shadow_dropped == {("e", "queue_full"): 1}
        seen.gate.set()
        await until(lambda: metrics.shadow[("e", "next", "sent")] == 2, "both sent copies")
        assert metrics.shadow[("e", "next", "agreed")] == 0  # the digest differs from b""
        small = shadow.ShadowPool(
            experiment="e", transport=transport, eventlog=DisabledEventLog(), metrics=metrics, max_bytes=1
        )
        small.offer(copy)  # two bytes of body: over the byte budget, without a worker ever started
        assert metrics.shadow_dropped == {("e", "queue_full"): 2}
        seen.gate.clear()
        pool.offer(copy)
        await until(lambda: seen.pending == 1, "a copy in flight")
        pool.offer(copy)  # one in flight, one queued: both counted when the router stops
    finally:
        await pool.close()
        await transport.close()
        seen.gate.set()  # the model server's held handler ends
    assert metrics.shadow_dropped == {("e", "queue_full"): 2, ("e", "closing"): 2}


async def test_a_shadow_at_zero_percent_gets_nothing(make_router: MakeRouter, aiohttp_server: Any) -> None:
    (control, _), (nxt, seen) = [await started(aiohttp_server, n) for n in ("control", "next")]
    r = await make_router(variants=variants(control, nxt, percent=0))
    for i in range(10):
        resp = await r.client.post("/predict", headers={"X-User-Id": f"u{i}"}, data=b"{}")
        resp.release()
    assert r.router.metrics.shadow == {} and seen.requests == []


async def test_the_analyzer_reports_the_shadow_and_the_policy_makes_it_live(
    make_router: MakeRouter, aiohttp_server: Any
) -> None:
    (control, _), (nxt, seen) = [await started(aiohttp_server, n) for n in ("control", "next")]
    rails = [{"metric": "errors", "direction": "decrease", "margin": 0.05}]
    r = await make_router(
        variants=variants(control, nxt),
        analysis={"min_units_per_arm": 50, "expected_units_per_arm": 100, "ramp": [10, 50], "guardrails": rails},
    )
    for i in range(150):
        resp = await r.client.post("/predict", headers={"X-User-Id": f"u{i}"}, data=b"{}")
        assert resp.headers["X-AB-Variant"] == "control"
        resp.release()
    await until(lambda: len(seen.requests) == 150, "the copies")
    await r.settle()
    client = redis.asyncio.Redis.from_url(r.redis_url)
    try:
        result = await service.look(client, spec.load(r.path), sink=FileSink(r.path))
    finally:
        await client.aclose()
    (arm,) = result.to_dict()["shadows"]
    assert (arm["name"], arm["units"], arm["copies"], arm["errors"], arm["agreement"]) == ("next", 150, 150, 0, 1)
    assert arm["healthy"], arm["guardrails"]
    assert set(result.srm.observed) == {"control"}  # the shadow is not assigned: no SRM
    assert "agreement" in report.render(result) and "next" in report.render(result)
    assert result.decision.action == "ramp", result.decision.reason
    assert result.decision.weights == {"control": 90.0, "next": 10.0}
    # The spec file now has `next` live at 10%, and the router follows it.
    await r.wait_for_epoch(2)
    assert spec.load(r.path).shadows == ()
    served = set()
    for i in range(200, 400):
        resp = await r.client.post("/predict", headers={"X-User-Id": f"u{i}"}, data=b"{}")
        served.add(resp.headers["X-AB-Variant"])
        resp.release()
    assert served == {"control", "next"}


def test_adding_a_shadow_moves_no_unit() -> None:
    live = [
        {"name": "control", "upstream": "http://a", "weight": 70},
        {"name": "b", "upstream": "http://b", "weight": 30},
    ]
    shadowed = [*live[:1], {"name": "next", "upstream": "http://c", "weight": 0, "shadow": True}, live[1]]
    tables = [
        RoutingTable(experiment=spec.parse({"name": "e", "unit": {"header": "U"}, "variants": v}), since=0.0)
        for v in (live, shadowed)
    ]
    for i in range(2000):
        before, after = (t.experiment.variants[t.assigner.assign(f"u{i}")].name for t in tables)
        assert before == after
