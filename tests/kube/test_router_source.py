"""Running routers follow an Experiment resource: the real app, the real client, our API server."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from abrouter import cli
from abrouter.contract import resource
from abrouter.kube.client import KubeClient, Ref
from abrouter.router.settings import ServeSettings
from abrouter.router.sources.kube import KubeSource
from abrouter.router.state import Router
from tests.kube.apiserver import PLURAL, KubeApiServer
from tests.kube.conftest import NAMESPACE, experiment_object
from tests.router.served import RouterClient, serve
from tests.router.upstreams import model_app


@dataclass
class RunningRouter:
    http: RouterClient
    source: KubeSource

    @property
    def router(self) -> Router:
        return self.http.router

    async def variants(self, users: int = 40) -> set[str]:
        seen = set()
        for i in range(users):
            resp = await self.http.post("/predict", json={}, headers={"X-User-Id": f"user-{i}"})
            assert resp.status == 200, await resp.text()
            seen.add(resp.headers["X-AB-Variant"])
        return seen

    async def wait_for(self, epoch: int, timeout_s: float = 2.0) -> float:
        """Seconds until the router serves `epoch`; fails after `timeout_s`."""
        start = time.monotonic()
        while self.http.lane.table.epoch != epoch:
            assert time.monotonic() - start < timeout_s, (
                f"epoch {epoch} not applied: {self.http.lane.source.last_error}"
            )
            await asyncio.sleep(0.01)
        return time.monotonic() - start


StartRouter = Callable[[], Awaitable[RunningRouter]]


@pytest.fixture
async def experiment(kube_api: KubeApiServer, aiohttp_server: Any, experiment_name: str) -> dict[str, Any]:
    urls = {}
    for name in ("control", "candidate"):
        server = await aiohttp_server(model_app(name))
        urls[name] = str(server.make_url("")).rstrip("/")
    variants = [{"name": n, "upstream": u, "weight": 50} for n, u in urls.items()]
    return kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name, variants=variants))


@pytest.fixture
async def start_router(
    kubeconfig: Path, redis_url: str, tmp_path: Path, experiment: dict[str, Any]
) -> AsyncIterator[StartRouter]:
    clients: list[KubeClient] = []
    routers: list[RouterClient] = []
    ref = Ref(NAMESPACE, experiment["metadata"]["name"])

    async def start() -> RunningRouter:
        client = KubeClient.from_config(kubeconfig, role="router")
        clients.append(client)
        found = resource.parse(client.get(ref))  # as `abrouter serve --experiment` starts
        source = KubeSource(client, ref, resource_version=found.resource_version, min_backoff_s=0.05, max_backoff_s=0.2)
        settings = ServeSettings(
            redis_url=redis_url, spill_dir=tmp_path / f"spill-{len(clients)}", flush_interval_s=0.05
        )
        http = await serve(found.experiment, settings, source=source)
        routers.append(http)
        return RunningRouter(http=http, source=source)

    yield start
    for router in routers:
        await router.close()
    for client in clients:
        client.close()


def patch_weights(kube_api: KubeApiServer, experiment: dict[str, Any], **weights: float) -> dict[str, Any]:
    """A person's `kubectl edit` of the weights (no epoch to keep: the generation moves)."""
    current = kube_api.get(PLURAL, NAMESPACE, experiment["metadata"]["name"])
    assert current is not None
    for v in current["spec"]["variants"]:
        v["weight"] = weights.get(v["name"], v["weight"])
    return kube_api.put(PLURAL, NAMESPACE, current)


async def test_a_weight_patch_reaches_two_routers_within_2s_and_they_agree_on_the_epoch(
    kube_api: KubeApiServer, start_router: StartRouter, experiment: dict[str, Any]
) -> None:
    routers = [await start_router(), await start_router()]
    assert {r.http.lane.table.epoch for r in routers} == {1}
    assert [await r.variants() for r in routers] == [{"control", "candidate"}] * 2
    await asyncio.sleep(0.2)  # both watches are open

    patched = patch_weights(kube_api, experiment, control=0, candidate=100)
    assert patched["metadata"]["generation"] == 2
    delays = [await r.wait_for(2) for r in routers]

    assert max(delays) < 2.0
    assert [await r.variants() for r in routers] == [{"candidate"}] * 2
    assert [r.http.lane.table.weights_by_name() for r in routers] == [{"control": 0.0, "candidate": 1.0}] * 2


async def test_a_watch_that_gets_410_relists_and_carries_on(
    kube_api: KubeApiServer, start_router: StartRouter, experiment: dict[str, Any]
) -> None:
    r = await start_router()
    await asyncio.sleep(0.2)
    kube_api.fail_next_watch_with_410()
    kube_api.end_watches()  # the stream ends as at its timeout; the next watch hears 410
    deadline = time.monotonic() + 2
    while r.source.relists == 0:
        assert time.monotonic() < deadline, "the source did not relist after 410"
        await asyncio.sleep(0.01)

    patch_weights(kube_api, experiment, control=100, candidate=0)
    await r.wait_for(2)
    assert await r.variants() == {"control"}


async def test_with_the_api_down_the_router_keeps_serving_its_last_weights(
    kube_api: KubeApiServer, start_router: StartRouter, experiment: dict[str, Any]
) -> None:
    r = await start_router()
    patch_weights(kube_api, experiment, control=0, candidate=100)
    await r.wait_for(2)
    kube_api.down()
    deadline = time.monotonic() + 2
    while r.source.failures < 2:  # it backs off and tries again
        assert time.monotonic() < deadline, "the source did not notice the API going down"
        await asyncio.sleep(0.01)

    assert await r.variants() == {"candidate"}
    ready = await r.http.get("/abrouter/readyz")
    assert ready.status == 200, await ready.text()

    kube_api.up()
    patch_weights(kube_api, experiment, control=100, candidate=0)
    await r.wait_for(3, timeout_s=3)
    assert await r.variants() == {"control"}


async def test_an_invalid_spec_is_rejected_with_an_event_and_the_last_good_one_stays(
    kube_api: KubeApiServer, start_router: StartRouter, experiment: dict[str, Any]
) -> None:
    r = await start_router()
    await asyncio.sleep(0.2)
    patch_weights(kube_api, experiment, candidate=0, control=0)  # the schema allows it, the parser does not
    deadline = time.monotonic() + 10
    while not r.http.lane.source.last_error:
        assert time.monotonic() < deadline, "the invalid spec was not reported"
        await asyncio.sleep(0.01)

    assert "spec.variants: weights are all zero" in r.http.lane.source.last_error
    assert r.http.lane.table.epoch == 1 and await r.variants() == {"control", "candidate"}
    (event,) = kube_api.list("events", NAMESPACE)
    assert event["reason"] == "InvalidSpec" and event["type"] == "Warning"
    assert event["involvedObject"]["name"] == experiment["metadata"]["name"]
    assert "spec.variants: weights are all zero" in event["message"]

    patch_weights(kube_api, experiment, candidate=100, control=0)  # fixed: followed again
    await r.wait_for(3)
    assert r.http.lane.source.last_error is None


def test_serve_with_a_bad_reference_or_a_missing_experiment_is_one_line(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--experiment", "no-namespace"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--experiment must be NAMESPACE/NAME" in line

    assert cli.main(["serve", "--experiment", f"{NAMESPACE}/missing", "--kubeconfig", str(kubeconfig)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert f"not found: experiments.abrouter.io {NAMESPACE}/missing" in line

    assert cli.main(["serve", "--kubeconfig", str(kubeconfig)]) == 2
    assert "--kubeconfig needs --experiment" in capsys.readouterr().err


async def test_the_watch_thread_ends_when_the_router_shuts_down(
    start_router: StartRouter, experiment: dict[str, Any]
) -> None:
    r = await start_router()
    await asyncio.sleep(0.2)
    name = f"watch {NAMESPACE}/{experiment['metadata']['name']}"
    assert [t for t in threading.enumerate() if t.name == name]
    await r.http.close()
    deadline = time.monotonic() + 2
    while [t for t in threading.enumerate() if t.name == name]:
        assert time.monotonic() < deadline, "the watch thread outlived the router"
        await asyncio.sleep(0.01)


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_router_refused_list_and_watch_says_so_and_keeps_serving_until_allowed_again(
    kube_api: KubeApiServer, start_router: StartRouter
) -> None:
    r = await start_router()
    assert (await r.http.get("/abrouter/readyz")).status == 200
    kube_api.allow("experiments", "get")  # the Role lost list and watch
    kube_api.end_watches()  # the open stream ends; the next list is refused

    async def refused() -> bool:
        return "reload_error" in await (await r.http.get("/abrouter/readyz")).json()

    await _until(refused, "the router did not notice it lost list/watch")
    resp = await r.http.get("/abrouter/readyz")
    body = await resp.json()
    # Still ready: a Role broken under running pods must not take them out of the Service.
    assert resp.status == 200 and body["status"] == "ready" and body["spec_source"] == "denied"
    assert re.search(r"the router's Role needs the verb (list|watch) on experiments$", body["reload_error"])
    assert re.search(r"^abrouter_spec_source_up\{.*\} 0$", await (await r.http.get("/abrouter/metrics")).text(), re.M)
    assert await r.variants() == {"control", "candidate"}  # predictions still flow on the last spec
    shown = await (await r.http.get("/abrouter/experiment")).json()  # the same error (it may name the other verb)
    assert re.search(r"the router's Role needs the verb (list|watch) on experiments$", shown["reload_error"])

    kube_api.roles.pop("experiments")

    async def allowed() -> bool:
        return "reload_error" not in await (await r.http.get("/abrouter/readyz")).json()

    await _until(allowed, "the router did not notice it may list and watch again")
    assert re.search(r"^abrouter_spec_source_up\{.*\} 1$", await (await r.http.get("/abrouter/metrics")).text(), re.M)
    assert (await (await r.http.get("/abrouter/experiment")).json())["reload_error"] is None
