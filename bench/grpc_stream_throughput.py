"""Large server-streaming answers through the router's own gRPC path: MB/s, and the router's CPU per MiB.

Starts, on 127.0.0.1: a grpc.aio upstream (this script with ``--serve PORT``: ``/bench.Big/Stream``
answers a request of N with N messages of 1 MiB), and ``abrouter serve --grpc-port --no-event-log``
(own HTTP/2) in front of it; with ``--before TREE`` also the router of another checkout (its
``abrouter`` on PYTHONPATH, e.g. a ``git worktree`` of main built with ``pip install -e .``), so two
versions are measured in one run. Routers on `--proxy-cpus`, the upstream and the client on
`--load-cpus`. Then, for `--rounds`, each target in turn (the order alternating by round):
`--calls` calls of `--mib` MiB each, `--concurrency` at once on one connection (a grpc.aio
channel), timed from the first call's start to the last message; the router's CPU (utime +
stime) over the same window. Prints a Markdown table of the medians (min-max). Bounded: every
round is `--calls` calls.

With ``--hold N``, instead: a caller written by hand opens N calls of `--mib` MiB on one connection
to each router and reads none of the answers (it keeps the default windows, 64 KiB, and credits
nothing); once the router's resident memory stopped growing (no change of 1 MiB over 2 s, at most
`--hold-s`), its growth is what it holds for that caller.

    .venv/bin/python bench/grpc_stream_throughput.py --mib 8 --calls 20 --rounds 5 --before /tmp/g17w-before
    .venv/bin/python bench/grpc_stream_throughput.py --hold 1000 --mib 2 --before /tmp/g17w-before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import grpc.aio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from grpc_bench import ROOT, SPEC, cpu_seconds, free_port, process, wait_port  # noqa: E402

PY = sys.executable
METHOD = "/bench.Big/Stream"
CHUNK = 1 << 20


def _identity(data: bytes) -> bytes:
    return data


async def serve(port: int) -> None:
    chunk = b"x" * CHUNK

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> object:
        for _ in range(int(request)):
            yield chunk

    handler = grpc.method_handlers_generic_handler(
        "bench.Big",
        {"Stream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity)},  # type: ignore[arg-type]
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _round(target: str, *, mib: int, calls: int, concurrency: int) -> float:
    """Seconds for `calls` answers of `mib` MiB, `concurrency` at once on one channel."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_stream(METHOD)
        queue = list(range(calls))

        async def worker(n: int) -> None:
            while queue:
                queue.pop()
                got = 0
                async for message in call(str(mib).encode(), metadata=(("x-user-id", f"u{n}"),), timeout=120):
                    got += len(message)
                assert got == mib * CHUNK, got

        await asyncio.wait_for(channel.channel_ready(), 30)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        return time.perf_counter() - t0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def hold(port: int, pid: int, *, calls: int, mib: int, limit_s: float) -> tuple[float, float]:
    """(RSS before, RSS once stable) of the router while a caller holds `calls` answers of `mib` MiB unread."""
    from abrouter.router.h2 import frames, hpack

    base = rss_mib(pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    encoder = hpack.Encoder()
    out = [frames.PREFACE, frames.settings({})]
    request = str(mib).encode()
    for n in range(calls):
        fields = [(":method", "POST"), (":scheme", "http"), (":path", METHOD), (":authority", "router"),
                  ("content-type", "application/grpc"), ("te", "trailers"), ("x-user-id", f"u{n}")]  # fmt: skip
        sid = 2 * n + 1
        out.append(frames.headers(sid, encoder.encode(fields), end_stream=False, max_frame=16384))
        out.append(frames.data(sid, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True))
    writer.write(b"".join(out))

    async def drain() -> None:  # read (and drop) what comes: the router's windows to us stay shut
        while await reader.read(1 << 16):
            pass

    task = asyncio.ensure_future(drain())
    loop = asyncio.get_running_loop()
    deadline, last, since = loop.time() + limit_s, rss_mib(pid), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.5)
        now = rss_mib(pid)
        if abs(now - last) >= 1:
            last, since = now, loop.time()
        elif loop.time() - since >= 2:
            break
    writer.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await task
    return base, last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mib", type=int, default=8, help="MiB per answer (1 MiB messages)")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--hold", type=int, default=0, help="calls whose answers a caller holds unread (see above)")
    p.add_argument("--hold-s", type=float, default=60.0)
    p.add_argument("--before", type=Path, help="also the router of this checkout (`before`)")
    p.add_argument("--proxy-cpus", default="0")
    p.add_argument("--load-cpus", default="1")
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    tmp = Path(tempfile.mkdtemp(prefix="grpc-stream-"))
    up_port, after_port, after_http, before_port, before_http = (free_port() for _ in range(5))
    (tmp / "exp.yaml").write_text(SPEC.format(a=up_port, b=up_port))

    def router(grpc_port: int, http: int) -> list[str]:
        return [PY, "-m", "abrouter", "--log-level", "WARNING", "serve", "--config", str(tmp / "exp.yaml"),
                "--host", "127.0.0.1", "--port", str(http), "--grpc-port", str(grpc_port), "--no-event-log",
                "--spill-dir", str(tmp / f"spill-{grpc_port}")]  # fmt: skip

    upstream = [PY, __file__, "--serve", str(up_port)]
    results: dict[str, list[tuple[float, float]]] = {}
    with (
        process(upstream, args.load_cpus, tmp / "upstream.log") as up,
        process(router(after_port, after_http), args.proxy_cpus, tmp / "after.log") as ra,
        process(router(before_port, before_http) if args.before else ["sleep", "infinity"], args.proxy_cpus,
                tmp / "before.log", args.before or ROOT) as rb,
    ):  # fmt: skip
        for port, proc in ((up_port, up), (after_port, ra), *([(before_port, rb)] if args.before else [])):
            wait_port(port, proc)
        targets = {"direct": (up_port, 0), "after": (after_port, ra.pid)}
        if args.before:
            targets["before"] = (before_port, rb.pid)
        subprocess.run(["taskset", "-p", "-c", args.load_cpus, str(os.getpid())], check=True,
                       capture_output=True)  # fmt: skip
        if args.hold:
            print(f"A caller holding {args.hold} answers of {args.mib} MiB unread on one connection:\n")
            print("| router | RSS before, MiB | RSS holding, MiB | held, MiB |\n|---|---|---|---|")
            for name in ("before", "after"):
                if name in targets:
                    port, pid = targets[name]
                    base, held = asyncio.run(hold(port, pid, calls=args.hold, mib=args.mib, limit_s=args.hold_s))
                    print(f"| {name} | {base:.0f} | {held:.0f} | {held - base:.0f} |")
            return
        for port, _ in targets.values():  # warm-up
            asyncio.run(_round(f"127.0.0.1:{port}", mib=args.mib, calls=2, concurrency=1))
        for round_ in range(args.rounds):
            names = list(targets) if round_ % 2 == 0 else list(reversed(targets))
            for name in names:
                port, pid = targets[name]
                cpu0 = cpu_seconds(pid) if pid else 0.0
                seconds = asyncio.run(
                    _round(f"127.0.0.1:{port}", mib=args.mib, calls=args.calls, concurrency=args.concurrency)
                )
                cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
                mb = args.mib * args.calls * CHUNK / 1e6
                results.setdefault(name, []).append((mb / seconds, cpu / (args.mib * args.calls) * 1e3))
                print(f"round {round_ + 1} {name}: {mb / seconds:.0f} MB/s, cpu {cpu:.2f} s", file=sys.stderr)
    print(json.dumps({k: v for k, v in results.items()}), file=sys.stderr)
    print(f"{args.calls} answers of {args.mib} MiB, {args.concurrency} at once on one connection, "
          f"{args.rounds} rounds (median, min-max):\n")  # fmt: skip
    print("| target | MB/s | router CPU ms per MiB |\n|---|---|---|")
    for name, runs in results.items():
        rates, cpus = [r for r, _ in runs], [c for _, c in runs]
        cpu = f"{statistics.median(cpus):.2f} ({min(cpus):.2f}-{max(cpus):.2f})" if any(cpus) else "-"
        print(f"| {name} | {statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f}) | {cpu} |")


if __name__ == "__main__":
    main()
