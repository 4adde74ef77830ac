"""A real router serving on 127.0.0.1 (the listener `abrouter serve` runs), and a client for it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from abrouter.contract import experiment as model
from abrouter.contract.experiment import Experiment
from abrouter.router import serving
from abrouter.router.connections import Limits
from abrouter.router.http.listener import Listener
from abrouter.router.settings import ServeSettings
from abrouter.router.sources.base import SpecSource
from abrouter.router.sources.catalog import CatalogSource
from abrouter.router.state import Lane, Router


class RouterClient:
    """``client.get("/predict")``: aiohttp requests to the router by path (a real socket, keep-alive)."""

    def __init__(self, router: Router, server: Listener, stack: contextlib.AsyncExitStack) -> None:
        self.router = router
        self.server = server
        self.base = f"http://127.0.0.1:{server.port}"
        # unsafe: the router's cookies are for 127.0.0.1, an IP address.
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), auto_decompress=False)
        self._stack = stack
        self.closed = False

    @property
    def lane(self) -> Lane:
        """The experiment served, when the router serves exactly one."""
        only = self.router.lanes.only
        assert only is not None, "the router serves several experiments: use router.lane(name)"
        return only

    @property
    def port(self) -> int:
        return self.server.port

    def make_url(self, path: str) -> str:
        return self.base + path

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, self.base + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Any:
        return self.request("HEAD", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    async def close(self) -> None:
        """Stop the router as SIGTERM does: drain, close, final flush."""
        if self.closed:
            return
        self.closed = True
        try:
            await self.session.close()
        finally:
            await self._stack.aclose()


async def serve(
    experiment: Experiment | list[Experiment],
    settings: ServeSettings,
    *,
    source: SpecSource | None = None,
    catalog: CatalogSource | None = None,
    shutdown_timeout_s: float = 5.0,
    grpc_port: int | None = None,
    grpc_server: str = "own",
) -> RouterClient:
    """The router serving `experiment` (or several), following `source` (one) or `catalog` (a namespace)."""
    stack = contextlib.AsyncExitStack()
    experiments = experiment if isinstance(experiment, list) else [experiment]
    sources = {experiments[0].name: source} if source is not None else {}
    plan = serving.Plan(
        experiments=experiments,
        settings=settings,
        sources=sources,
        catalog=catalog,
        shutdown_timeout_s=shutdown_timeout_s,
        grpc_port=grpc_port,
        grpc_server=grpc_server,
    )
    router, server = await stack.enter_async_context(serving.serving(plan))
    return RouterClient(router, server, stack)


def two_arms(name: str, control: str, candidate: str | None = None, **changes: Any) -> dict[str, Any]:
    """A spec with a control and a candidate (50/50 unless `changes` say otherwise), unit X-User-Id."""
    spec: dict[str, Any] = {
        "name": name,
        "unit": {"header": "X-User-Id"},
        "variants": [
            {"name": "control", "upstream": control, "weight": 50},
            {"name": "candidate", "upstream": candidate or control, "weight": 50},
        ],
        "timeouts": {"connect": 1, "read": 5},
    }
    spec.update(changes)
    return spec


def write_spec(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


async def serve_spec(
    spec: dict[str, Any], *, redis_url: str, tmp_path: Path, limits: Limits | None = None, transport: str = "httptools"
) -> RouterClient:
    """`spec` written to a file and served as `abrouter serve --config` would, flushing every 50 ms."""
    settings = ServeSettings(
        redis_url=redis_url,
        spill_dir=tmp_path / "spill",
        flush_interval_s=0.05,
        upstream_transport=transport,  # type: ignore[arg-type]
        client_limits=limits or Limits(),
    )
    return await serve(model.load(write_spec(tmp_path, spec)), settings)
