"""`abrouter serve --grpc-port`: the configuration error; a real process that serves gRPC and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
import grpc.aio
import pytest

from abrouter import cli
from tests.router.grpc.servers import EchoServer, free_port

CONFIG = """\
name: serve-grpc
unit: {{header: X-User-Id}}
variants:
  - {{name: control, upstream: "http://127.0.0.1:1", grpc_upstream: "{control}", weight: 50}}
  - {{name: candidate, upstream: "http://127.0.0.1:2", {candidate}weight: 50}}
"""


@pytest.mark.parametrize("from_env", [False, True])
def test_a_grpc_port_with_a_variant_lacking_grpc_upstream_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_env: bool
) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(CONFIG.format(control="127.0.0.1:1", candidate=""))
    flag = []
    if from_env:
        monkeypatch.setenv("ABROUTER_GRPC_PORT", str(free_port()))
    else:
        flag = ["--grpc-port", str(free_port())]
    code = cli.main(["serve", "--config", str(config), "--no-event-log", "--port", str(free_port()), *flag])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("abrouter: error: --grpc-port: variant 'candidate' (variants[1]) of experiment 'serve-grpc'")
    assert "has no grpc_upstream" in err and err.count("\n") == 1


def test_a_taken_grpc_port_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(CONFIG.format(control="127.0.0.1:1", candidate='grpc_upstream: "127.0.0.1:2", '))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--config", str(config), "--no-event-log", "--host", "127.0.0.1", "--port", str(free_port())]
        code = cli.main(["serve", *argv, "--grpc-port", str(port)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"abrouter: error: cannot listen for gRPC on 127.0.0.1:{port}: the address is in use")
    assert "move it with --grpc-port" in err and err.count("\n") == 1


def test_a_unit_that_grpc_calls_cannot_carry_is_warned_about(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    spec = CONFIG.format(control="127.0.0.1:1", candidate='grpc_upstream: "127.0.0.1:2", ')
    config.write_text(spec.replace("unit: {header: X-User-Id}", "unit: {cookie: uid}"))
    with socket.socket() as taken:  # serve stops right after its checks
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = ["--config", str(config), "--no-event-log", "--host", "127.0.0.1", "--port", str(free_port())]
        assert cli.main(["serve", *argv, "--grpc-port", str(taken.getsockname()[1])]) == 1
    assert "unit.cookie: gRPC calls carry metadata, not cookies: each gRPC call is assigned as its own unit" in (
        caplog.text
    )


def test_a_bad_grpc_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--grpc-port", "70000"]) == 2
    assert "argument --grpc-port: must be a TCP port 0..65535" in capsys.readouterr().err


@pytest.mark.parametrize("server", ["own", "grpcio"])
async def test_serve_proxies_grpc_and_sigterm_lets_a_call_in_flight_finish(tmp_path: Path, server: str) -> None:
    echo = {name: await EchoServer(name).start() for name in ("control", "candidate")}
    config = tmp_path / "exp.yaml"
    candidate = f'grpc_upstream: "{echo["candidate"].address}", '
    config.write_text(CONFIG.format(control=echo["control"].address, candidate=candidate))
    grpc_port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "abrouter", "--log-level", "WARNING", "serve", "--config", str(config),
        "--no-event-log", "--host", "127.0.0.1", "--port", str(free_port()), "--grpc-port", str(grpc_port),
        "--grpc-server", server,
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ("ABROUTER_GRPC_PORT", "ABROUTER_GRPC_SERVER")},
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            unary = channel.unary_unary("/test.Echo/Unary")
            reply = await unary(b"hi", metadata=(("x-user-id", "u1"),), timeout=120, wait_for_ready=True)
            assert reply in (b"control:hi", b"candidate:hi")
            call = channel.unary_stream("/test.Echo/Wait")(b"", metadata=(("x-user-id", "u1"),), timeout=120)
            variant = dict(await call.initial_metadata())["x-ab-variant"]
            assert await call.read() == f"{variant}:first".encode()
            proc.send_signal(signal.SIGTERM)
            for _ in range(600):  # draining: a new call is refused, while the one in flight goes on
                try:
                    await unary(b"again", metadata=(("x-user-id", "u1"),), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the router never stopped taking calls after SIGTERM")
            assert proc.returncode is None
            echo[variant].release.set()
            assert await call.read() == f"{variant}:last".encode()
            assert await call.code() is grpc.StatusCode.OK
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for server in echo.values():
            server.release.set()
            await server.stop()


def test_the_grpc_server_is_ours_by_default_grpcio_on_request_and_the_help_says_which_is_which(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ABROUTER_GRPC_SERVER", raising=False)
    assert cli.build_parser().parse_args(["serve"]).grpc_server == "own"
    assert cli.build_parser().parse_args(["serve", "--grpc-server", "grpcio"]).grpc_server == "grpcio"
    monkeypatch.setenv("ABROUTER_GRPC_SERVER", "grpcio")
    assert cli.build_parser().parse_args(["serve"]).grpc_server == "grpcio"
    serve = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["serve"]  # type: ignore[union-attr]
    text = " ".join(serve.format_help().split())
    assert "--grpc-server {own,grpcio}" in text and "grpc.aio" in text and "own HTTP/2" in text
