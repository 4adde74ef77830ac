"""The router's resident memory: at start, with N idle keep-alive connections, after U distinct units.

Starts `abrouter serve` in its default configuration (the bundled-example-free kind: a
config with two upstreams, every exposure logged to a private Redis), with two tiny
upstreams of its own on 127.0.0.1, and reads VmRSS from /proc. Everything on loopback;
every loop bounded.

    .venv/bin/python bench/router_memory.py                      # 9,000 connections, 1,000,000 units
    .venv/bin/python bench/router_memory.py --connections 2000 --units 50000

Units are sent by `wrk` (Debian's package) with a Lua script that numbers the unit ids,
so every request is a new unit; without wrk, by this script (slower).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABROUTER = ROOT / ".venv" / "bin" / "abrouter"

UPSTREAM = """
import asyncio, sys
BODY = b'{"ok": true}'
RESP = b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(BODY), BODY)
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while True:
            head, sep, rest = self.buf.partition(b"\\r\\n\\r\\n")
            if not sep: return
            n = 0
            for line in head.split(b"\\r\\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length": n = int(v)
            if len(rest) < n: return
            self.buf = rest[n:]
            self.t.write(RESP)
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await s.serve_forever()
asyncio.run(main())
"""

WRK_LUA = """
local n = 0
local body = '{"inputs": [1, 2, 3]}'
request = function()
  n = n + 1
  return wrk.format("POST", "/predict", {["X-User-Id"] = "unit-" .. n, ["Content-Type"] = "application/json"}, body)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def idle_connections(port: int, n: int) -> list[asyncio.StreamWriter]:
    """n keep-alive connections, each after one request (so each is a served, idle connection)."""
    writers = []
    request = b"POST /predict HTTP/1.1\r\nHost: x\r\nX-User-Id: idle\r\nContent-Length: 2\r\n\r\n{}"
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await reader.readuntil(b"}")
        writers.append(writer)
    return writers


def send_units(port: int, units: int) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        asyncio.run(_send_units_slowly(port, units))
        return
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
    # wrk runs for a time, not a count: run in short bursts until `units` requests were sent.
    sent = 0
    while sent < units:
        out = subprocess.run(
            [wrk, "-t1", "-c32", "-d5s", "-s", f.name, f"http://127.0.0.1:{port}/predict"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        done = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
        sent += done
        print(f"  {sent:,} units sent", flush=True)
    os.unlink(f.name)


async def _send_units_slowly(port: int, units: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(units):
        writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-User-Id: u%d\r\nContent-Length: 2\r\n\r\n{}" % i)
        await reader.readuntil(b"}")
    writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=9000)
    parser.add_argument("--units", type=int, default=1_000_000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="abrouter-memory-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = [free_port(), free_port()]
        for p in ports:
            procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM, str(p)]))
        config = tmp / "experiment.yaml"
        config.write_text(
            "name: memory\nunit: {header: X-User-Id}\nvariants:\n"
            f"  - {{name: a, upstream: 'http://127.0.0.1:{ports[0]}', weight: 50}}\n"
            f"  - {{name: b, upstream: 'http://127.0.0.1:{ports[1]}', weight: 50}}\n"
        )
        port = free_port()
        router = subprocess.Popen(
            [str(ABROUTER), "--log-level", "WARNING", "serve", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port), "--spill-dir", str(tmp / "spill")],
            cwd=tmp,
        )  # fmt: skip
        procs.append(router)
        for p in [*ports, port]:
            wait_port(p)
        time.sleep(1.0)
        print(f"RSS at start: {rss_mib(router.pid):.1f} MiB", flush=True)

        async def hold() -> None:
            writers = await idle_connections(port, args.connections)
            print(f"RSS with {len(writers):,} idle keep-alive connections: {rss_mib(router.pid):.1f} MiB", flush=True)
            for w in writers:
                w.close()

        asyncio.run(hold())
        time.sleep(1.0)
        send_units(port, args.units)
        time.sleep(1.0)
        print(f"RSS after {args.units:,}+ distinct units: {rss_mib(router.pid):.1f} MiB", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
