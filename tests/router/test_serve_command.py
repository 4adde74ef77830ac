"""`abrouter serve`'s own words: the quick start's banner, ports in use, an unreachable Redis.

The failures run `abrouter.cli.main` in this process (serve stops at the port it cannot
bind); the quick start that serves runs as a real process, stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from abrouter import cli
from abrouter.router.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
name: serve-words
unit: {header: X-User-Id}
variants:
  - {name: control, upstream: "http://127.0.0.1:1", weight: 50}
  - {name: candidate, upstream: "http://127.0.0.1:2", weight: 50}
"""


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def serve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["serve", "--host", "127.0.0.1", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_taken_example_model_port_is_named_before_any_banner(capsys, taken_port):
    code, out, err = serve(
        capsys, "--no-event-log", "--port", str(free_port()), "--example-ports", f"{taken_port},{free_port()}"
    )
    assert code == 1 and out == "", out
    assert f"cannot start the example control model on 127.0.0.1:{taken_port}: Address already in use" in err
    assert "--example-ports PORT,PORT" in err and err.count("\n") == 1


def test_a_taken_router_port_is_one_line_and_no_banner(capsys, taken_port):
    """The banner waits until the router listens: here it never does."""
    ports = f"{free_port()},{free_port()}"
    code, out, err = serve(capsys, "--no-event-log", "--port", str(taken_port), "--example-ports", ports)
    assert code == 1 and out == "", out
    assert err.startswith("abrouter: error: ") and err.count("\n") == 1, err
    assert str(taken_port) in err and "in use" in err


def test_example_ports_belong_to_the_bundled_example(capsys, tmp_path, taken_port):
    config = tmp_path / "exp.yaml"
    config.write_text(CONFIG)
    port = ("--port", str(taken_port))  # should the check regress, serve fails instead of serving on
    code, _, err = serve(capsys, *port, "--config", str(config), "--example-ports", "18301,18302")
    assert code == 2 and "--example-ports moves the bundled example's models" in err
    code, _, err = serve(capsys, *port, "--example-ports", "18301")
    assert code == 2 and "argument --example-ports: must be two ports, PORT,PORT" in err


def test_an_unreachable_redis_is_said_loudly_before_serving(capsys, tmp_path, taken_port):
    config = tmp_path / "exp.yaml"
    config.write_text(CONFIG)
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    spill = tmp_path / "spill"
    # The taken port stops serve right after its checks, so the test can read what it said.
    code, _, err = serve(
        capsys, "--config", str(config), "--redis-url", url, "--port", str(taken_port), "--spill-dir", str(spill)
    )
    assert code == 1
    warning = err[err.index("abrouter: WARNING:") :]
    assert warning.startswith("abrouter: WARNING: Redis at redis://user:***@127.0.0.1:")
    assert "cannot be used" in warning and f"every event waits in {spill}/" in warning
    assert "`abrouter analyze` sees\n  none of them until then" in warning and "secret" not in err


def test_the_quick_start_serves_on_the_ports_it_announces(tmp_path):
    port, control, candidate = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # its own private Redis
    proc = subprocess.Popen(
        [sys.executable, "-m", "abrouter", "--log-level", "WARNING", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--example-ports", f"{control},{candidate}", "--spill-dir", str(tmp_path / "spill")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        text = ""
        while not text.endswith("stop with Ctrl-C\n"):  # blocks until serve prints its banner
            line = proc.stdout.readline()
            assert line, f"serve exited: {text}{proc.stderr.read() if proc.stderr else ''}"
            text += line
        assert f"on http://127.0.0.1:{port}\n" in text, text
        assert f"control http://127.0.0.1:{control}, candidate http://127.0.0.1:{candidate}" in text
        assert "it and everything in it vanish when serve stops" in text
        assert "analyze, from another terminal while serve runs:" in text and "abrouter analyze --config" in text
        seen = {_predict(port, f"u{i}")["model"] for i in range(40)}
        assert seen == {"model-a", "model-b"}, "both example models answer on the moved ports"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
    assert proc.returncode == 0


def _predict(port: int, user: str) -> dict[str, str]:
    """POST /predict; the router may still be binding for a moment after its banner."""
    deadline = time.monotonic() + 60
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=b"{}", headers={"X-User-Id": user}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_settled_heap_is_frozen_and_young_objects_collected_less_often():
    import gc

    from abrouter.router import serving

    threshold = gc.get_threshold()
    try:
        serving.settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (serving.YOUNG_THRESHOLD, *threshold[1:])
        assert serving.YOUNG_THRESHOLD > threshold[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
