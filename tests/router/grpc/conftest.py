"""Fixtures for the gRPC adapter: our own gRPC servers as the variants, a real router with both listeners."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
import yaml

from abrouter.contract import experiment as model
from abrouter.contract.keys import Keys
from abrouter.router.connections import Limits
from abrouter.router.settings import ServeSettings
from abrouter.router.sources.file import FileSource
from tests.router.conftest import RouterUnderTest
from tests.router.grpc.servers import EchoServer, OipServer, free_port
from tests.router.served import serve


@dataclass
class GrpcRouter(RouterUnderTest):
    grpc_port: int = 0

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.grpc_address)


MakeGrpcRouter = Callable[..., Awaitable[GrpcRouter]]


@pytest.fixture
async def echo_servers() -> AsyncIterator[dict[str, EchoServer]]:
    servers = {name: await EchoServer(name).start() for name in ("control", "candidate")}
    yield servers
    for server in servers.values():
        server.release.set()
        await server.stop()


@pytest.fixture
async def oip_servers() -> AsyncIterator[dict[str, OipServer]]:
    servers = {
        "control": await OipServer("control", 1000).start(),
        "candidate": await OipServer("candidate", 2000).start(),
    }
    yield servers
    for server in servers.values():
        await server.stop()


@pytest.fixture(params=["own", "grpcio"])
def grpc_server(request: pytest.FixtureRequest) -> str:
    """Every test of the listener runs on both gRPC servers (`abrouter serve --grpc-server`)."""
    return str(request.param)


@pytest.fixture
async def make_grpc_router(
    redis_url: str, experiment_name: str, tmp_path: Path, grpc_server: str
) -> AsyncIterator[MakeGrpcRouter]:
    routers: list[GrpcRouter] = []

    async def make(
        grpc_upstreams: dict[str, str],
        weights: dict[str, float] | None = None,
        *,
        limits: Limits | None = None,
        models: dict[str, str] | None = None,
        **changes: Any,
    ) -> GrpcRouter:
        """`models`: a variant's own model name (the per-arm rewrite)."""
        weights = weights or {"control": 50, "candidate": 50}
        spec = {
            "name": experiment_name,
            "unit": {"header": "X-User-Id"},
            "variants": [
                {"name": n, "upstream": "http://127.0.0.1:9", "grpc_upstream": grpc_upstreams[n], "weight": w}
                | ({"model": models[n]} if models and n in models else {})
                for n, w in weights.items()
            ],
            "metrics": [{"name": "conversion", "kind": "binary"}],
            "timeouts": {"connect": 1, "read": 5},
            **changes,
        }
        path = tmp_path / "experiment.yaml"
        path.write_text(yaml.safe_dump(spec))
        settings = ServeSettings(
            redis_url=redis_url,
            spill_dir=tmp_path / "spill",
            flush_interval_s=0.05,
            client_limits=limits or Limits(),
        )
        port = free_port()
        client = await serve(
            model.load(path),
            settings,
            source=FileSource(path, interval_s=0.05),
            grpc_port=port,
            grpc_server=grpc_server,
        )
        r = GrpcRouter(
            client=client, path=path, spec=spec, keys=Keys(experiment_name), redis_url=redis_url, grpc_port=port
        )
        routers.append(r)
        return r

    yield make
    for r in reversed(routers):
        await r.client.close()
