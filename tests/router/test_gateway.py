"""One router, several experiments (issue 16): matching, the per-arm model rewrite, no_experiment.

Pure checks of `abrouter.router.matching` first, then real sockets: the router on
127.0.0.1 in front of real aiohttp upstreams that echo what they received.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from scipy import stats

from abrouter.contract import experiment as model
from abrouter.contract.fields import ConfigError
from abrouter.contract.model import Match
from abrouter.router import matching
from abrouter.router.settings import ServeSettings
from tests.router.served import RouterClient, serve, two_arms

# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("/v2/models/recsys/infer", "recsys"),
        ("/v2/models/recsys/versions/3/infer", "recsys"),
        ("/v2/models/recsys", "recsys"),
        ("/v2/models/recsys?x=1", "recsys"),
        ("/v1/models/recsys:predict", "recsys"),
        ("/v1/models/recsys", "recsys"),
        ("/v2/models/", None),
        ("/v2/health/ready", None),
        ("/predict", None),
    ],
)
def test_the_model_is_read_from_oip_and_kserve_paths(target: str, name: str | None) -> None:
    at = matching.model_in_path(target)
    assert (at.name if at else None) == name
    if at is not None:
        assert matching.rewrite_path(target, at, "other") == target.replace(name or "", "other", 1)


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b'{"model": "gpt-x", "messages": []}', "gpt-x"),
        (b'{"messages": [{"model": "nested"}], "model": "top"}', "top"),
        (b'{"messages": [{"model": "nested"}]}', None),
        (b'{"prompt": "say \\"model\\": \\"fake\\"", "n": 1}', None),
        (b'  {\n "model" : "spaced" }', "spaced"),
        (b'{"model": 3}', None),
        (b"[1, 2]", None),
        (b"not json", None),
        (b'{"model": "caf\xc3\xa9"}', "café"),
        (b"\xff\xfe", None),
        (b"", None),
    ],
)
def test_a_json_bodys_top_level_model_and_only_it_is_read(body: bytes, name: str | None) -> None:
    at = matching.model_in_body(body)
    assert (at.name if at else None) == name


def test_the_body_rewrite_changes_the_model_and_nothing_else() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": "recsys", "n": 2}).encode()
    at = matching.model_in_body(body)
    assert at is not None
    rewritten = matching.rewrite_body(body, at, "recsys-v2")
    assert json.loads(rewritten) == {**json.loads(body), "model": "recsys-v2"}
    assert rewritten.replace(b'"recsys-v2"', b'"recsys"') == body  # every other byte as sent


def _find(gateway: matching.Gateway, target: str, host: str = "x", body: bytes | None = None, **headers: str) -> str:
    found = gateway.find(target, [("Host", host), *headers.items()], body)
    return found[0] if found else "-"


def test_the_most_specific_match_wins() -> None:
    gateway = matching.Gateway(
        {
            "catch-all": Match(),
            "by-path": Match(path="/v1/*"),
            "by-longer-path": Match(path="/v1/chat/*"),
            "by-host": Match(host="ml.example.com"),
            "by-model": Match(model="recsys"),
            "by-model-and-host": Match(model="recsys", host="ml.example.com"),
            "by-header": Match(headers=(("x-tenant", "a"),)),
        }
    )
    assert _find(gateway, "/v2/models/recsys/infer", host="ml.example.com:8080") == "by-model-and-host"
    assert _find(gateway, "/v2/models/recsys/infer") == "by-model"
    assert _find(gateway, "/v1/chat/completions", body=b'{"model": "recsys"}') == "by-model"
    assert _find(gateway, "/v1/chat/completions", host="ML.example.com") == "by-host"
    assert _find(gateway, "/v1/chat/completions") == "by-longer-path"
    assert _find(gateway, "/v1/completions") == "by-path"
    assert _find(gateway, "/predict", **{"X-Tenant": "a"}) == "by-header"
    assert _find(gateway, "/predict") == "catch-all"
    assert _find(matching.Gateway({"only": Match(model="m")}), "/predict") == "-"


def test_matches_that_plainly_overlap_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError, match="'alpha' and 'beta' match the same requests") as caught:
        matching.Gateway({"beta": Match(model="recsys", path="/v2/*"), "alpha": Match(model="recsys", path="/v2/*")})
    assert caught.value.path == "match"
    with pytest.raises(ConfigError, match="every request"):
        matching.Gateway({"a": Match(), "b": Match()})


# --------------------------------------------------------------------------- real sockets


class Echo:
    """An upstream that records every request it got and echoes its path and body."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[str, bytes]] = []

    def app(self) -> web.Application:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            self.seen.append((request.raw_path, body))
            return web.json_response({"upstream": self.name, "path": request.raw_path, "body": body.decode()})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        return app


async def _upstreams(aiohttp_server: Any, *names: str) -> dict[str, tuple[Echo, str]]:
    out = {}
    for name in names:
        echo = Echo(name)
        server = await aiohttp_server(echo.app())
        out[name] = (echo, str(server.make_url("")).rstrip("/"))
    return out


def _experiment(name: str, a: str, b: str, **changes: Any) -> model.Experiment:
    return model.parse(two_arms(name, a, b, **changes))


async def _first_and_second(aiohttp_server: Any, settings: ServeSettings, **changes: Any) -> RouterClient:
    """The router serving experiments "first" and "second", matched by those model names."""
    up = await _upstreams(aiohttp_server, "a", "b")
    experiments = [_experiment(n, up["a"][1], up["b"][1], match={"model": n}, **changes) for n in ("first", "second")]
    return await serve(experiments, settings)


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> ServeSettings:
    return ServeSettings(redis_url=redis_url, spill_dir=tmp_path / "spill", flush_interval_s=0.05)


async def test_two_experiments_on_one_port_matched_by_oip_path_and_by_json_body(
    aiohttp_server: Any, settings: ServeSettings
) -> None:
    up = await _upstreams(aiohttp_server, "rec-a", "rec-b", "chat-a", "chat-b")
    recsys = _experiment("recsys", up["rec-a"][1], up["rec-b"][1], match={"model": "recsys"})
    chat = _experiment("chat", up["chat-a"][1], up["chat-b"][1], match={"model": "assistant"})
    r = await serve([recsys, chat], settings)
    try:
        first: dict[tuple[str, str], str] = {}
        for _ in range(2):  # the second round: every user lands where the first put them
            for i in range(30):
                user = {"X-User-Id": f"u{i}"}
                resp = await r.post("/v2/models/recsys/infer", json={"inputs": []}, headers=user)
                assert resp.status == 200 and resp.headers["X-AB-Experiment"] == "recsys"
                assert (await resp.json())["upstream"].startswith("rec-")
                body = {"model": "assistant", "messages": []}
                resp2 = await r.post("/v1/chat/completions", json=body, headers=user)
                assert resp2.status == 200 and resp2.headers["X-AB-Experiment"] == "chat"
                assert (await resp2.json())["upstream"].startswith("chat-")
                for exp, got in (("recsys", resp), ("chat", resp2)):
                    variant = got.headers["X-AB-Variant"]
                    assert first.setdefault((exp, f"u{i}"), variant) == variant, "not sticky"
        assert {v for (e, _), v in first.items() if e == "recsys"} == {"control", "candidate"}
        served = {name: len(echo.seen) for name, (echo, _) in up.items()}
        assert served["rec-a"] + served["rec-b"] == 60 and served["chat-a"] + served["chat-b"] == 60
    finally:
        await r.close()


async def test_a_variants_model_name_reaches_its_upstream_in_the_path_and_the_body(
    aiohttp_server: Any, settings: ServeSettings
) -> None:
    up = await _upstreams(aiohttp_server, "v1", "v2")
    spec = two_arms("recsys", up["v1"][1], up["v2"][1], match={"model": "recsys"})
    spec["variants"][0]["model"] = "recsys-v1"
    spec["variants"][1]["model"] = "recsys-v2"
    r = await serve(model.parse(spec), settings)
    try:
        for i in range(20):
            force = {"X-User-Id": f"u{i}"}
            resp = await r.post("/v2/models/recsys/versions/2/infer?trace=1", json={"inputs": [1]}, headers=force)
            got = await resp.json()
            arm = "recsys-v1" if got["upstream"] == "v1" else "recsys-v2"
            assert got["path"] == f"/v2/models/{arm}/versions/2/infer?trace=1"
            assert json.loads(got["body"]) == {"inputs": [1]}
            payload = {"messages": [{"role": "user", "content": "model"}], "model": "recsys", "stream": False}
            resp = await r.post("/v1/chat/completions", json=payload, headers=force)
            got = await resp.json()
            arm = "recsys-v1" if got["upstream"] == "v1" else "recsys-v2"
            assert got["path"] == "/v1/chat/completions"
            assert json.loads(got["body"]) == {**payload, "model": arm}
        assert {echo.name for echo, _ in up.values() if echo.seen} == {"v1", "v2"}
    finally:
        await r.close()


async def test_a_request_no_experiment_takes_gets_404_no_experiment_and_is_counted(
    aiohttp_server: Any, settings: ServeSettings
) -> None:
    up = await _upstreams(aiohttp_server, "a", "b")
    r = await serve(_experiment("recsys", up["a"][1], up["b"][1], match={"model": "recsys"}), settings)
    try:
        resp = await r.post("/v2/models/other/infer", json={}, headers={"X-User-Id": "u1"})
        assert resp.status == 404
        body = await resp.json()
        assert body["code"] == "no_experiment" and "/v2/models/other/infer" in body["error"]
        assert "X-AB-Variant" not in resp.headers
        assert not any(echo.seen for echo, _ in up.values())
        metrics = await (await r.get("/abrouter/metrics")).text()
        assert 'abrouter_no_experiment_total{experiment="recsys"} 1' in metrics
        assert r.router.metrics.requests == {}  # nobody's request, nobody's error
    finally:
        await r.close()


async def test_two_50_50_experiments_assign_independently_over_4000_users(
    aiohttp_server: Any, settings: ServeSettings
) -> None:
    r = await _first_and_second(aiohttp_server, settings)
    try:
        table = [[0, 0], [0, 0]]
        arms = {"control": 0, "candidate": 1}

        async def user(i: int) -> None:
            got = []
            for name in ("first", "second"):
                resp = await r.post(f"/v2/models/{name}/infer", data=b"{}", headers={"X-User-Id": f"user-{i}"})
                assert resp.status == 200
                got.append(arms[resp.headers["X-AB-Variant"]])
                resp.release()
            table[got[0]][got[1]] += 1

        for start in range(0, 4000, 100):  # bounded: 100 users at a time
            await asyncio.gather(*(user(i) for i in range(start, start + 100)))
    finally:
        await r.close()
    assert sum(map(sum, table)) == 4000
    # Independent salts: the arm in one experiment says nothing about the arm in the other.
    # With one shared hash (Envoy's "sticky" weights) the table would be diagonal: p ~ 0.
    assert stats.chi2_contingency(table).pvalue > 0.001, table
    assert min(min(row) for row in table) > 800, table


async def test_outcomes_find_their_experiment_by_request_id_or_by_name(
    aiohttp_server: Any, settings: ServeSettings
) -> None:
    r = await _first_and_second(aiohttp_server, settings, metrics=[{"name": "clicks", "kind": "continuous"}])
    try:
        resp = await r.post("/v2/models/second/infer", json={}, headers={"X-User-Id": "u1"})
        rid = resp.headers["X-AB-Request-Id"]
        accepted = await r.post("/abrouter/outcomes", json={"request_id": rid, "metric": "clicks", "value": 2})
        assert accepted.status == 202, await accepted.text()
        assert r.router.metrics.outcomes == {("second", "clicks"): 1}
        unnamed = await r.post("/abrouter/outcomes", json={"unit": "u1", "metric": "clicks", "value": 1})
        assert unnamed.status == 422
        assert (await unnamed.json())["items"][0]["field"] == "experiment"
        await asyncio.sleep(0.2)  # the exposure's flush: the unit is known in Redis
        named = {"unit": "u1", "metric": "clicks", "value": 1, "experiment": "second"}
        for _ in range(50):
            resp = await r.post("/abrouter/outcomes", json=named)
            if resp.status == 202:
                break
            await asyncio.sleep(0.1)
        assert resp.status == 202, await resp.text()
        listing = await (await r.get("/abrouter/experiment")).json()
        assert [e["spec"]["name"] for e in listing["experiments"]] == ["first", "second"]
    finally:
        await r.close()


async def test_a_shadow_gets_the_request_under_its_own_model_name(aiohttp_server: Any, settings: ServeSettings) -> None:
    up = await _upstreams(aiohttp_server, "live", "shadow")
    spec = two_arms("recsys", up["live"][1], up["shadow"][1], match={"model": "recsys"})
    spec["variants"][0].update(weight=100, model="recsys-v1")
    spec["variants"][1].update(weight=0, shadow=True, model="recsys-v3")
    r = await serve(model.parse(spec), settings)
    try:
        resp = await r.post("/v2/models/recsys/infer", json={"inputs": [1]}, headers={"X-User-Id": "u1"})
        assert (await resp.json())["path"] == "/v2/models/recsys-v1/infer"
        payload = {"model": "recsys", "messages": []}
        resp = await r.post("/v1/chat/completions", json=payload, headers={"X-User-Id": "u1"})
        assert json.loads((await resp.json())["body"])["model"] == "recsys-v1"
        shadow = up["shadow"][0]
        for _ in range(200):
            if len(shadow.seen) == 2:
                break
            await asyncio.sleep(0.05)
        seen = dict(shadow.seen)  # the copies may arrive in either order
        assert sorted(seen) == ["/v1/chat/completions", "/v2/models/recsys-v3/infer"]
        assert json.loads(seen["/v1/chat/completions"]) == {**payload, "model": "recsys-v3"}
    finally:
        await r.close()
