"""The private redis-server: start, PING, kill and restart with the data kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from abrouter.router.errors import RedisServerError
from abrouter.router.redis_server import RedisServer, find_binary, ping


def test_find_binary_is_executable() -> None:
    assert os.access(find_binary(), os.X_OK)


def test_start_answers_on_loopback_with_aof(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    finally:
        client.close()


def test_kill_then_restart_keeps_port_and_data(redis_server: RedisServer) -> None:
    port = redis_server.port
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("k", "v")
        redis_server.kill()
        assert not redis_server.running and not ping(port)  # type: ignore[arg-type]
        redis_server.restart()
        assert redis_server.port == port
        assert client.get("k") == b"v"  # written to the AOF before the reply; SIGKILL keeps it
    finally:
        client.close()


def test_stop_and_close_remove_the_data_dir() -> None:
    server = RedisServer()
    with server:
        data_dir = server.data_dir
        assert ping(server.port)  # type: ignore[arg-type]
        server.stop()
        assert not server.running
        assert data_dir.is_dir()  # kept for restart()
    assert not data_dir.exists()


def test_a_binary_that_cannot_run_is_our_error(tmp_path: Path) -> None:
    with pytest.raises(RedisServerError, match="cannot run"):
        RedisServer(binary=str(tmp_path / "no-such-redis-server"), data_dir=tmp_path).start()
