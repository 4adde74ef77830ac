"""Unary gRPC calls per second per core: abrouter's gRPC listener against Envoy, same upstream, same run.

Starts, on 127.0.0.1: the echo upstream (two ports, the two arms: `bench/h2_load.py --serve`,
raw HTTP/2 on uvloop, or with ``--load grpcio`` `bench/grpc_load.py --serve`, grpc.aio), a
private redis-server for the router's event log (no persistence), Envoy 1.40
(`bench/conf/envoy-grpc.yaml.in`: h2c both legs, Maglev on x-user-id, ``--concurrency 1``),
``abrouter serve --grpc-port`` twice (a 50/50 experiment keyed on x-user-id, event log on):
``--grpc-server own`` (our HTTP/2, the default) and ``--grpc-server grpcio`` (grpc.aio, the
path before it), `bench/grpc_floor.py` (grpc.aio forwarding to arm A and nothing else) and
`bench/tcp_floor.py` (bytes piped to arm A on uvloop, nothing parsed: the reads, writes and
wake-ups every proxy pays);
with ``--before TREE``, a third ``--grpc-server own`` router run from another checkout (e.g. a
``git worktree`` of main), to compare two versions of the router in one run.
The proxies run on core 0 (`--proxy-cpus`); the upstream, Redis and the load generator on
core 1 (`--load-cpus`). Then, interleaved over `--rounds` (``--phases``: both, or one):

1. closed: ``--concurrency`` calls in flight straight to arm A, through Envoy and through the
   router. With ``--load own`` (the default) the generator is `bench/h2_load.py` (raw HTTP/2 on
   uvloop; ~100,000-180,000 calls/s on one core with its echo, the direct row): it saturates a
   proxy, whose CPU share is then near its whole core when the machine is quiet, and
   **calls/s per proxy core** = calls/s / share compares the proxies at full load. Each call
   counts only if answered with grpc-status 0 and the message echoed. With ``--load grpcio``
   (grpc.aio, ~2,800 calls/s) no proxy gets past ~20% of its core: the per-core figure is then
   an extrapolation where per-wake-up costs dominate;
2. open: `grpc_load.py --rate R` (grpc.aio, as users call) the same ways (four with ``--before``): what each
   proxy adds, and each proxy's CPU per call at that same offered load.

Prints Markdown tables. Bounded: every load run lasts --seconds.

    .venv/bin/python bench/grpc_bench.py --rounds 3 --seconds 10
    .venv/bin/python bench/grpc_bench.py --rounds 2 --seconds 10 --phases closed --only abrouter,tcp-floor
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PY = sys.executable
ENVOY = "/tmp/splitbench-venv/bin/envoy"
#: The closed loop's generator and the echo upstream with ``--load own``.
LOAD = "h2_load.py"

SPEC = """\
name: grpc-bench
unit: {{header: X-User-Id}}
variants:
  - {{name: control, upstream: "http://127.0.0.1:9", grpc_upstream: "127.0.0.1:{a}", weight: 50}}
  - {{name: candidate, upstream: "http://127.0.0.1:9", grpc_upstream: "127.0.0.1:{b}", weight: 50}}
metrics:
  - {{name: conversion, kind: binary}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (every thread of it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s} s")


@contextmanager
def process(argv: list[str], cpus: str, log: Path, cwd: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    env = None if cwd == ROOT else {**os.environ, "PYTHONPATH": str(cwd)}  # that checkout's abrouter
    with open(log, "wb") as out:
        proc = subprocess.Popen(["taskset", "-c", cpus, *argv], stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(target: str, cpus: str, *extra: str, script: str = "grpc_load.py") -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", cpus, PY, str(HERE / script), "--target", target, *extra],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def closed_loop(args: argparse.Namespace, target: str, pid: int | None, method: tuple[str, ...]) -> dict[str, float]:
    """One closed-loop run; the proxy's CPU share over it (the generator's own window with ``--load own``)."""
    closed = ("--seconds", str(args.seconds), "--concurrency", str(args.concurrency))
    if args.load == "own":
        r = load(target, args.load_cpus, *method, *closed, *(("--cpu-pid", str(pid)) if pid else ()), script=LOAD)
        r["cpu_share"] = r.pop("proxy_cpu_s", 0.0) / r.pop("window_s", 1.0) if pid else 0.0
    else:
        cpu0, t0 = (cpu_seconds(pid) if pid else 0.0), time.monotonic()
        r = load(target, args.load_cpus, *method, *closed)
        r["cpu_share"] = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) if pid else 0.0
    r["per_core"] = r["calls_per_s"] / r["cpu_share"] if r["cpu_share"] else 0.0
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument(
        "--load",
        choices=("own", "grpcio"),
        default="own",
        help="the closed loop's generator and the echo upstream: bench/h2_load.py (raw HTTP/2 on uvloop, fast "
        "enough to saturate a proxy; default) or bench/grpc_load.py (grpc.aio, ~2,800 calls/s on one core)",
    )
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument(
        "--phases",
        default="closed,open",
        help="closed (the closed loop), open (--rate), or both (default: %(default)s)",
    )
    p.add_argument("--envoy", default=ENVOY)
    p.add_argument("--proxy-cpus", default="0")
    p.add_argument("--load-cpus", default="1")
    p.add_argument("--no-event-log", action="store_true", help="the router records nothing")
    p.add_argument(
        "--redis-idle",
        action="store_true",
        help="run Redis SCHED_IDLE (chrt --idle) on the load core: its flush.lua work then never delays the "
        "upstream or the load generator, as a Redis on another host would not (bench/redis_neighbour.py)",
    )
    p.add_argument("--before", type=Path, help="also run the router of this checkout (`abrouter-before`)")
    p.add_argument("--only", help="comma-separated targets to run (default: all; direct and envoy always run)")
    args = p.parse_args()
    from abrouter.router.redis_server import find_binary

    tmp = Path(tempfile.mkdtemp(prefix="grpc-bench-"))
    a, b, envoy_port, router_grpc, router_http, redis_port, floor_port = (free_port() for _ in range(7))
    aio_grpc, aio_http, before_grpc, before_http, tcp_port = (free_port() for _ in range(5))
    conf = (HERE / "conf" / "envoy-grpc.yaml.in").read_text()
    conf = conf.replace("@PORT_A@", str(a)).replace("@PORT_B@", str(b)).replace("@PORT@", str(envoy_port))
    (tmp / "envoy.yaml").write_text(conf)
    (tmp / "exp.yaml").write_text(SPEC.format(a=a, b=b))
    upstream = [PY, str(HERE / (LOAD if args.load == "own" else "grpc_load.py")), "--serve", f"{a},{b}"]
    redis = [find_binary(), "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no",
             "--dir", str(tmp)]  # fmt: skip
    redis = ["chrt", "--idle", "0", *redis] if args.redis_idle else redis
    # No hot restart: another Envoy on the machine (the shared harness's) would otherwise take
    # this one's place through their shared memory, and this one would exit mid-run.
    envoy = [args.envoy, "-c", str(tmp / "envoy.yaml"), "--concurrency", "1", "--log-level", "error",
             "--disable-hot-restart"]  # fmt: skip

    def router_argv(http: int, grpc: int, server: str, spill: str = "") -> list[str]:
        argv = [PY, "-m", "abrouter", "--log-level", "WARNING", "serve", "--config", str(tmp / "exp.yaml"),
                "--host", "127.0.0.1", "--port", str(http), "--grpc-port", str(grpc), "--grpc-server", server,
                "--spill-dir", str(tmp / (spill or f"spill-{server}"))]  # fmt: skip
        return argv + (
            ["--no-event-log"] if args.no_event_log else ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
        )

    router = router_argv(router_http, router_grpc, "own")
    router_aio = router_argv(aio_http, aio_grpc, "grpcio")
    router_before = router_argv(before_http, before_grpc, "own", "spill-before")
    floor = [PY, str(HERE / "grpc_floor.py"), "--port", str(floor_port), "--upstream", f"127.0.0.1:{a}"]
    tcp_floor = [PY, str(HERE / "tcp_floor.py"), "--port", str(tcp_port), "--upstream", f"127.0.0.1:{a}"]
    results: dict[str, list[dict[str, float]]] = {}
    with (
        process(upstream, args.load_cpus, tmp / "upstream.log") as up,
        process(redis, args.load_cpus, tmp / "redis.log") as rd,
        process(envoy, args.proxy_cpus, tmp / "envoy.log") as ev,
        process(router, args.proxy_cpus, tmp / "router.log") as rt,
        process(router_aio, args.proxy_cpus, tmp / "router-grpcio.log") as ra,
        process(floor, args.proxy_cpus, tmp / "floor.log") as fl,
        process(tcp_floor, args.proxy_cpus, tmp / "tcp-floor.log") as tf,
        process(router_before if args.before else ["sleep", "infinity"], args.proxy_cpus, tmp / "before.log",
                args.before or ROOT) as rb,
    ):  # fmt: skip
        ready = (
            (a, up),
            (b, up),
            (redis_port, rd),
            (envoy_port, ev),
            (router_grpc, rt),
            (aio_grpc, ra),
            (floor_port, fl),
            (tcp_port, tf),
            *([(before_grpc, rb)] if args.before else []),
        )
        for port, proc in ready:
            wait_port(port, proc)
        infer, other = ("--method", "/inference.GRPCInferenceService/ModelInfer"), ("--method", "/bench.Echo/Unary")
        targets = {
            "direct": (f"127.0.0.1:{a}", None, infer),
            "envoy": (f"127.0.0.1:{envoy_port}", ev.pid, infer),
            "abrouter-grpcio": (f"127.0.0.1:{aio_grpc}", ra.pid, infer),
            "abrouter": (f"127.0.0.1:{router_grpc}", rt.pid, infer),
            "abrouter-any": (f"127.0.0.1:{router_grpc}", rt.pid, other),
            "floor": (f"127.0.0.1:{floor_port}", fl.pid, infer),
            "tcp-floor": (f"127.0.0.1:{tcp_port}", tf.pid, infer),
        }
        if args.before:
            targets["abrouter-before"] = (f"127.0.0.1:{before_grpc}", rb.pid, infer)
        if args.only:
            keep = {"direct", "envoy", *args.only.split(",")}
            targets = {name: t for name, t in targets.items() if name in keep}
        script = LOAD if args.load == "own" else "grpc_load.py"
        for target, _, method in targets.values():  # warm-up: connections, caches
            load(
                target, args.load_cpus, *method, "--seconds", "2", "--concurrency", str(args.concurrency), script=script
            )
        for round_ in range(args.rounds):
            for name, (target, pid, method) in targets.items():
                if "closed" not in args.phases:
                    break
                r = closed_loop(args, target, pid, method)
                results.setdefault(name, []).append(r)
                print(f"round {round_ + 1} {name}: {json.dumps(r)}", file=sys.stderr, flush=True)
            for name, (target, pid, method) in targets.items():
                if name in ("abrouter-any", "floor", "abrouter-grpcio") or "open" not in args.phases:
                    continue
                cpu0 = cpu_seconds(pid) if pid else 0.0
                r = load(target, args.load_cpus, *method, "--seconds", str(args.seconds), "--rate", str(args.rate))
                # The same offered load for every proxy: its CPU per call, whatever the load side managed closed-loop.
                r["cpu_us_per_call"] = (cpu_seconds(pid) - cpu0) / r["calls"] * 1e6 if pid and r["calls"] else 0.0
                results.setdefault(f"{name}@rate", []).append(r)
                print(f"round {round_ + 1} {name} at {args.rate:g}/s: {json.dumps(r)}", file=sys.stderr, flush=True)
    print(report(results, args))


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    lines = closed_report(results, args) if "envoy" in results else []
    return "\n".join(lines + (open_report(results, args) if "envoy@rate" in results else []))


def closed_report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> list[str]:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    def spread(name: str, key: str, scale: float = 1.0) -> str:
        values = [r[key] * scale for r in results[name]]
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    envoy_core = med("envoy", "per_core")
    lines = [
        f"Closed loop ({args.load} load), {args.concurrency} calls in flight, {args.seconds:g} s x {args.rounds} "
        "rounds (median, min-max of rounds):",
        "",
        "| config | calls/s | errors | p50 ms | p99 ms | proxy cpu% | calls/s per proxy core | vs Envoy per core |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "direct": "direct (no proxy)",
        "envoy": "Envoy 1.40, 1 worker",
        "abrouter-grpcio": "abrouter --grpc-server grpcio, ModelInfer",
        "abrouter-before": f"abrouter --grpc-server own of {args.before} (before), ModelInfer",
        "abrouter": "abrouter --grpc-server own (after), ModelInfer",
        "abrouter-any": "abrouter --grpc-server own, a method it does not know",
        "floor": "grpc.aio forwarding and nothing else (bench/grpc_floor.py)",
        "tcp-floor": "bytes piped on uvloop, nothing parsed (bench/tcp_floor.py)",
    }
    for name, label in labels.items():
        if name not in results:
            continue
        errors = sum(r["errors"] for r in results[name])
        head = f"| {label} | {spread(name, 'calls_per_s')} | {errors:.0f} | {med(name, 'p50_ms'):.2f} | "
        if name == "direct":
            lines.append(head + f"{med(name, 'p99_ms'):.2f} | - | - | - |")
            continue
        cells = (
            f"{spread(name, 'cpu_share', 100)} | {spread(name, 'per_core')} | {med(name, 'per_core') / envoy_core:.2f}"
        )
        lines.append(head + f"{med(name, 'p99_ms'):.2f} | {cells} |")
    return lines


def open_report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> list[str]:
    lines = [
        "",
        f"Open loop at {args.rate:g} calls/s, {args.seconds:g} s x {args.rounds} rounds (min-max over rounds):",
        "",
        "| config | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("direct", "envoy", "abrouter", "abrouter-before"):
        if f"{name}@rate" not in results:
            continue
        runs = results[f"{name}@rate"]
        cells = []
        for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"):
            values = [r[key] for r in runs]
            cells.append(f"{min(values):.2f}-{max(values):.2f}")
        lines.append(f"| {name} | {' | '.join(cells)} | {sum(r['errors'] for r in runs):.0f} |")
    lines += [
        "",
        f"Proxy CPU per call at the same offered load ({args.rate:g} calls/s, open loop; median, min-max of rounds):",
        "",
        "| config | CPU µs per call | calls per proxy core | vs Envoy per core |",
        "|---|---|---|---|",
    ]
    envoy_us = statistics.median(r["cpu_us_per_call"] for r in results["envoy@rate"])
    for name in ("envoy", "abrouter", "abrouter-before", "tcp-floor"):
        if f"{name}@rate" not in results:
            continue
        values = [r["cpu_us_per_call"] for r in results[f"{name}@rate"]]
        us = statistics.median(values)
        ratio = f"{envoy_us / us:.2f}" if us else "-"
        lines.append(f"| {name} | {us:.1f} ({min(values):.1f}-{max(values):.1f}) | {1e6 / us:,.0f} | {ratio} |")
    return lines


if __name__ == "__main__":
    main()
