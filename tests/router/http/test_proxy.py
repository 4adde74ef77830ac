"""The proxy over real sockets: forwarding, header fidelity, errors, stickiness, ramps."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import time
from collections import Counter, defaultdict

import aiohttp
import pytest
from scipy.stats import chisquare

from tests.router.conftest import MakeRouter, RouterUnderTest
from tests.router.upstreams import GZIPPED

#: Every test here runs against both upstream clients (`make_router` builds the one named).
pytestmark = pytest.mark.parametrize("upstream_transport", ["aiohttp", "httptools"])


async def post(r: RouterUnderTest, path: str = "/predict", *, user: str | None = None, **kwargs):
    headers = dict(kwargs.pop("headers", {}))
    if user is not None:
        headers["X-User-Id"] = user
    return await r.client.post(path, headers=headers, **kwargs)


async def test_forwards_method_path_query_and_body(make_router: MakeRouter):
    r = await make_router()
    body = b'{"inputs": [1, 2, 3]}'
    for method in ("POST", "PUT", "PATCH", "DELETE", "GET"):
        resp = await r.client.request(
            method,
            "/v2/models/rec%2Fx/infer?a=1&a=2&b=%20",
            data=body,
            headers={"X-User-Id": "u1", "Content-Type": "application/json"},
        )
        seen = await resp.json()
        assert resp.status == 200
        assert seen["method"] == method
        assert seen["path_qs"] == "/v2/models/rec%2Fx/infer?a=1&a=2&b=%20"
        assert seen["body_sha"] == hashlib.sha256(body).hexdigest()
        assert resp.headers["X-AB-Variant"] == seen["upstream"] == resp.headers["X-Upstream"]
        assert resp.headers["X-AB-Experiment"] == r.spec["name"]
        assert len(resp.headers["X-AB-Request-Id"]) == 42


async def test_headers_pass_through_exactly(make_router: MakeRouter):
    r = await make_router()
    resp = await post(
        r,
        user="u1",
        data=b"\x00\x01binary",
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": "2",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "secret",
            "Host": "api.example",
            "X-Custom": "kept",
        },
    )
    seen = dict((k.lower(), v) for k, v in (await resp.json())["headers"])
    assert seen["content-type"] == "application/octet-stream"
    assert seen["inference-header-content-length"] == "2"
    assert seen["traceparent"].startswith("00-0af7651916cd43dd")
    assert seen["x-custom"] == "kept" and "x-hop" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1" and seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "api.example"
    assert resp.headers["Inference-Header-Content-Length"] == "17"


async def test_no_content_type_is_invented_either_way(make_router: MakeRouter, raw_upstream):
    r = await make_router(urls={"control": raw_upstream.url, "candidate": raw_upstream.url})
    resp = await post(r, "/no-ct", user="u1", data=b"raw")
    assert resp.status == 200 and await resp.read() == b"hello"
    assert "Content-Type" not in resp.headers
    # and the request leg: the echo upstream reports what it got
    r2 = await make_router()
    resp = await post(r2, user="u1", data=b"raw", skip_auto_headers=["Content-Type"])
    seen = dict((k.lower(), v) for k, v in (await resp.json())["headers"])
    assert "content-type" not in seen and seen["content-length"] == "3"


async def test_gzip_body_passes_compressed(make_router: MakeRouter):
    r = await make_router()
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(r.client.make_url("/gzip"), headers={"X-User-Id": "u1"}) as resp:
            raw = await resp.read()
            assert resp.headers["Content-Encoding"] == "gzip"
            assert raw == GZIPPED and json.loads(gzip.decompress(raw))["items"][-1] == 499


async def test_large_bodies_stream_both_ways(make_router: MakeRouter):
    r = await make_router()
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB, over the buffering limit

    async def chunks():
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    seen = await (await post(r, user="u1", data=chunks())).json()  # chunked upload
    assert seen["body_len"] == len(big) and seen["body_sha"] == hashlib.sha256(big).hexdigest()
    seen = await (await post(r, user="u1", data=io.BytesIO(big), headers={"Expect": "100-continue"})).json()
    assert seen["body_len"] == len(big) and seen["body_sha"] == hashlib.sha256(big).hexdigest()
    assert "expect" not in {k.lower() for k, _ in seen["headers"]}
    resp = await r.client.get("/stream?n=500", headers={"X-User-Id": "u1"})
    lines = (await resp.read()).splitlines()
    assert len(lines) == 500 and json.loads(lines[-1])["i"] == 499


async def test_refused_is_502_and_timeout_is_504_as_json(make_router: MakeRouter, unused_tcp_port_factory):
    dead = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    r = await make_router({"control": 100, "candidate": 0}, urls={"control": dead})
    resp = await post(r, user="u1")
    assert resp.status == 502
    body = await resp.json()
    assert body["code"] == "upstream_unavailable" and body["variant"] == "control"
    assert resp.headers["X-AB-Variant"] == "control"

    r2 = await make_router({"control": 0, "candidate": 100})
    resp = await post(r2, "/slow?s=3", user="u1")
    assert resp.status == 504 and (await resp.json())["variant"] == "candidate"
    text = await (await r2.client.get("/abrouter/metrics")).text()
    assert (
        'abrouter_errors_total{{experiment="{}",variant="candidate",reason="timeout"}} 1'.format(r2.spec["name"])
        in text
    )


async def test_timeouts_change_with_a_config_reload(make_router: MakeRouter):
    r = await make_router({"control": 100, "candidate": 0}, timeouts={"connect": 1, "read": 5})
    resp = await post(r, "/slow?s=0.6", user="u1")
    assert resp.status == 200
    resp.release()
    r.write_spec(timeouts={"connect": 1, "read": 0.2})  # same weights and epoch: only the timeouts
    deadline = time.monotonic() + 5
    while r.lane.table.experiment.timeouts.read_s != 0.2:
        assert time.monotonic() < deadline, r.lane.source.last_error
        await asyncio.sleep(0.02)
    resp = await post(r, "/slow?s=0.6", user="u1")
    assert resp.status == 504


async def test_connection_reset_is_502(make_router: MakeRouter, raw_upstream):
    r = await make_router(urls={"control": raw_upstream.url, "candidate": raw_upstream.url})
    resp = await post(r, "/reset", user="u1")
    assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"


#: For the tests that send thousands of requests: about stickiness and the split, not
#: timeouts, so a loaded machine's pause must not turn into a 504.
PATIENT = {"timeouts": {"connect": 5, "read": 10}}


async def _send(r: RouterUnderTest, users: list[str], per_user: int) -> dict[str, set[str]]:
    """per_user requests for every user, 50 in flight; returns the variants each user saw."""
    seen: dict[str, set[str]] = defaultdict(set)
    gate = asyncio.Semaphore(50)

    async def one(user: str) -> None:
        async with gate:
            resp = await post(r, user=user, data=b"{}")
            assert resp.status == 200
            seen[user].add(resp.headers["X-AB-Variant"])
            assert resp.headers["X-Upstream"] == resp.headers["X-AB-Variant"]
            resp.release()

    await asyncio.gather(*(one(u) for u in users for _ in range(per_user)))
    return seen


@pytest.mark.parametrize("weights", [{"control": 50, "candidate": 50}, {"control": 90, "candidate": 10}])
async def test_ten_thousand_requests_from_a_thousand_units_are_sticky_and_split(make_router: MakeRouter, weights):
    r = await make_router(weights, **PATIENT)
    users = [f"user-{i}" for i in range(1000)]
    seen = await _send(r, users, per_user=10)
    assert all(len(v) == 1 for v in seen.values()), "a unit saw two variants"
    counts = Counter(next(iter(v)) for v in seen.values())
    expected = [1000 * w / 100 for w in weights.values()]
    assert chisquare([counts[n] for n in weights], expected).pvalue > 0.001, counts
    await r.settle()
    strata = await r.strata()
    assert sum(s.exposures for s in strata.values()) == 10_000
    assert sum(s.units for s in strata.values()) == 1000


async def test_three_variants_are_sticky_and_split(make_router: MakeRouter):
    weights = {"control": 20, "candidate": 30, "third": 50}
    r = await make_router(weights, **PATIENT)
    seen = await _send(r, [f"user-{i}" for i in range(1000)], per_user=2)
    assert all(len(v) == 1 for v in seen.values())
    counts = Counter(next(iter(v)) for v in seen.values())
    assert chisquare([counts[n] for n in weights], [200, 300, 500]).pvalue > 0.001, counts


async def test_ramp_via_config_reload_moves_units_only_into_the_raised_variant(make_router: MakeRouter):
    r = await make_router({"control": 10, "candidate": 90}, **PATIENT)
    users = [f"user-{i}" for i in range(1000)]
    before = {u: next(iter(v)) for u, v in (await _send(r, users, per_user=1)).items()}
    r.spec["variants"][0]["weight"] = 50
    r.spec["variants"][1]["weight"] = 50
    r.write_spec(epoch=2)
    await r.wait_for_epoch(2)
    after = {u: next(iter(v)) for u, v in (await _send(r, users, per_user=2)).items()}
    moves = Counter((before[u], after[u]) for u in users if before[u] != after[u])
    assert set(moves) == {("candidate", "control")}, moves
    assert 300 < moves[("candidate", "control")] < 500  # about 40% of all units
    await r.settle()
    # Intent-to-treat: every returning user stays in its first epoch and variant; the
    # movers are flagged as multiple exposures (the shadow strata ~mx), in epoch 1 only.
    strata = await r.strata()
    assert {e for e, _ in strata} == {1}
    assert strata[(1, "candidate~mx")].units == moves[("candidate", "control")]
    assert strata[(1, "control")].units + strata[(1, "candidate")].units == len(users)


async def test_three_variant_ramp_over_http(make_router: MakeRouter):
    r = await make_router({"control": 40, "candidate": 40, "third": 20}, **PATIENT)
    users = [f"user-{i}" for i in range(600)]
    before = {u: next(iter(v)) for u, v in (await _send(r, users, per_user=1)).items()}
    r.spec["variants"][2]["weight"] = 60
    r.write_spec(epoch=2)
    await r.wait_for_epoch(2)
    after = {u: next(iter(v)) for u, v in (await _send(r, users, per_user=1)).items()}
    moved = {(before[u], after[u]) for u in users if before[u] != after[u]}
    assert moved and moved <= {("control", "third"), ("candidate", "third")}


async def test_a_rejected_reload_leaves_the_watcher_alive(make_router: MakeRouter):
    r = await make_router()
    r.write_spec(metrics=[{"name": "conversion", "kind": "continuous"}, {"name": "revenue", "kind": "continuous"}])
    for _ in range(200):
        if r.lane.source.last_error:
            break
        await asyncio.sleep(0.02)
    assert "metrics can only be appended" in r.lane.source.last_error
    r.spec["metrics"][0]["kind"] = "binary"
    r.spec["variants"][1]["weight"] = 90
    r.write_spec(epoch=2)
    await r.wait_for_epoch(2)  # a later valid reload still applies
    assert r.lane.source.last_error is None


async def test_reload_without_epoch_bump_is_rejected_and_reported(make_router: MakeRouter):
    r = await make_router()
    r.spec["variants"][1]["weight"] = 90
    r.write_spec()
    for _ in range(100):
        body = await (await r.client.get("/abrouter/experiment")).json()
        if body["reload_error"]:
            break
        await asyncio.sleep(0.02)
    assert "epoch did not increase" in body["reload_error"]
    assert body["weights"] == {"control": 0.5, "candidate": 0.5} and body["epoch"] == 1


async def test_without_unit_id_assignment_is_random_per_request(make_router: MakeRouter):
    r = await make_router()
    variants = Counter()
    for _ in range(60):
        resp = await post(r)
        variants[resp.headers["X-AB-Variant"]] += 1
        resp.release()
    assert set(variants) == {"control", "candidate"}


async def test_cookie_unit_is_set_and_then_sticks(make_router: MakeRouter):
    r = await make_router(unit={"cookie": "ab_uid"})
    first = await post(r)
    cookie = first.cookies["ab_uid"].value
    assert len(cookie) == 32
    variant = first.headers["X-AB-Variant"]
    for _ in range(20):
        again = await r.client.post("/predict", headers={"Cookie": f"ab_uid={cookie}"})
        assert again.headers["X-AB-Variant"] == variant and "ab_uid" not in again.cookies
        again.release()


async def test_a_new_cookie_is_set_on_error_responses_too(make_router: MakeRouter, unused_tcp_port_factory):
    dead = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    r = await make_router(urls={"control": dead, "candidate": dead}, unit={"cookie": "ab_uid"})
    resp = await post(r)
    assert resp.status == 502 and len(resp.cookies["ab_uid"].value) == 32  # the retry is the same unit


async def test_query_unit(make_router: MakeRouter):
    r = await make_router(unit={"query": "uid"})
    variants = {(await r.client.get("/predict?uid=u7")).headers["X-AB-Variant"] for _ in range(10)}
    assert len(variants) == 1


async def test_force_variant_header_is_off_by_default(make_router: MakeRouter):
    r = await make_router({"control": 100, "candidate": 0})
    resp = await post(r, user="u1", headers={"X-AB-Force-Variant": "candidate"})
    assert resp.headers["X-AB-Variant"] == "control"
    seen = dict((k.lower(), v) for k, v in (await resp.json())["headers"])
    assert "x-ab-force-variant" not in seen


async def test_force_variant_header_when_enabled(make_router: MakeRouter):
    r = await make_router({"control": 100, "candidate": 0}, allow_force_variant=True)
    resp = await post(r, user="u1", headers={"X-AB-Force-Variant": "candidate"})
    assert resp.headers["X-AB-Variant"] == "candidate"
    bad = await post(r, user="u1", headers={"X-AB-Force-Variant": "nope"})
    assert bad.status == 400 and "unknown variant 'nope'" in (await bad.json())["error"]
    await r.settle()
    assert sum(s.exposures for s in (await r.strata()).values()) == 0  # QA traffic is not an exposure
