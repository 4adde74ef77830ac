"""`abrouter serve --experiments NAMESPACE`: Experiments added, changed and deleted live (issue 16).

The real router, the real kubernetes client, our API test server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from abrouter.kube.client import KubeClient
from abrouter.router.settings import ServeSettings
from abrouter.router.sources.catalog import CatalogSource
from tests.kube.apiserver import PLURAL, KubeApiServer
from tests.kube.conftest import NAMESPACE, experiment_object
from tests.router.served import RouterClient, serve
from tests.router.upstreams import model_app


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.05)


async def _status(r: RouterClient, model: str) -> tuple[int, str | None]:
    resp = await r.post(f"/v2/models/{model}/infer", json={}, headers={"X-User-Id": "u1"})
    resp.release()
    return resp.status, resp.headers.get("X-AB-Experiment")


async def test_experiments_added_changed_and_deleted_in_the_namespace_are_served_live(
    kube_api: KubeApiServer, kubeconfig: Path, redis_url: str, tmp_path: Path, aiohttp_server: Any
) -> None:
    urls = []
    for name in ("control", "candidate"):
        server = await aiohttp_server(model_app(name))
        urls.append(str(server.make_url("")).rstrip("/"))
    variants = [
        {"name": "control", "upstream": urls[0], "weight": 50},
        {"name": "candidate", "upstream": urls[1], "weight": 50},
    ]

    def put(name: str, model: str) -> dict[str, Any]:
        return kube_api.put(PLURAL, NAMESPACE, experiment_object(name, variants=variants, match={"model": model}))

    put("alpha", "alpha")
    client = KubeClient.from_config(kubeconfig, role="router")
    experiments, catalog = CatalogSource.start(client, NAMESPACE, min_backoff_s=0.05, max_backoff_s=0.2)
    assert [e.name for e in experiments] == ["alpha"]
    settings = ServeSettings(redis_url=redis_url, spill_dir=tmp_path / "spill", flush_interval_s=0.05)
    r = await serve(experiments, settings, catalog=catalog)
    try:
        assert await _status(r, "alpha") == (200, "alpha")
        assert (await _status(r, "beta"))[0] == 404

        put("beta", "beta")  # added
        await _eventually(lambda: _is(r, "beta", (200, "beta")), "beta served")

        put("gamma", "beta")  # the same match as beta's: refused, beta keeps it
        await asyncio.sleep(0.5)
        assert await _status(r, "beta") == (200, "beta") and "gamma" not in r.router.lanes.by_name
        shown = await (await r.get("/abrouter/experiment")).json()
        assert "gamma: not served while its match overlaps" in shown["reload_error"]

        put("beta", "renamed")  # changed: its match moves
        await _eventually(lambda: _is(r, "renamed", (200, "beta")), "beta's new match")

        client.custom.delete_namespaced_custom_object("abrouter.io", "v1alpha1", NAMESPACE, PLURAL, "alpha")
        await _eventually(lambda: _is(r, "alpha", (404, None)), "alpha no longer served")
        assert await _status(r, "renamed") == (200, "beta")
        metrics = await (await r.get("/abrouter/metrics")).text()
        assert "abrouter_experiments 2" in metrics  # beta, and gamma once beta's model moved away
    finally:
        await r.close()
        client.close()


async def _is(r: RouterClient, model: str, expected: tuple[int, str | None]) -> bool:
    return await _status(r, model) == expected
