"""Where the router's CPU per gRPC call goes at a fixed offered load: user and system time per call, profiled.

Starts on 127.0.0.1 the echo upstream and a private redis-server on core 1 (`--load-cpus`), one
``abrouter serve --grpc-port`` (``--grpc-server own``, the spec of `bench/grpc_bench.py`) on core 0
(`--proxy-cpus`), warms it (3 s closed loop), waits until its event log holds nothing (`settle`: the
warm-up's backlog, ~25k events, would otherwise be encoded and flushed inside the measured window, which
inflated the event log's share ~3x before 2026-12-05), then offers `--rate` unary ``ModelInfer`` calls per second
for `--seconds` (`bench/grpc_load.py`'s open loop) and prints one JSON line: the load's figures and the
router's user and system CPU per call (``/proc/PID/stat``: the split is the kernel's tick sampling, the
sum is exact). ``--profile py-spy`` records the router meanwhile (``py-spy record --native``, collapsed
stacks in ``--out``; py-spy is not a dependency: ``pip install py-spy``), ``--profile strace`` counts its
system calls (``strace -c -f``). ``--tree`` runs the router of another checkout (its compiled build, if
any), as `grpc_bench.py --before` does. ``--no-event-log`` takes the event log out (its share).
``--probe`` runs the router under `bench/loop_probe.py` and adds its loop-lag figures for the window.

    .venv/bin/python bench/grpc_cpu_split.py --rate 1000 --seconds 10
    .venv/bin/python bench/grpc_cpu_split.py --rate 1000 --seconds 10 --no-event-log
    .venv/bin/python bench/grpc_cpu_split.py --rate 1000 --seconds 20 --profile py-spy --out /tmp/router.txt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc_bench as gb
import loop_probe

#: What `settle` waits for to read zero: events held in memory (the batch being filled, cut
#: batches, the outbox) and in the spill file.
BACKLOG = ("abrouter_eventlog_buffered_events", "abrouter_eventlog_spilled_events")


def user_system(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def backlog(http_port: int) -> float:
    """The router's event log's events not yet in Redis (`BACKLOG`), from its /abrouter/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/abrouter/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0] in BACKLOG)


def settle(http_port: int, timeout_s: float = 60.0) -> float:
    """Wait until the router's event log has held nothing for 3 polls in a row (a flush interval or more);
    the seconds waited. Raises after `timeout_s`: a router that never catches up is a finding, not a figure."""
    start = time.monotonic()
    quiet = 0
    while quiet < 3:
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(
                f"the router's event log still holds {backlog(http_port):.0f} events after {timeout_s} s"
            )
        quiet = quiet + 1 if backlog(http_port) == 0 else 0
        time.sleep(0.2)
    return time.monotonic() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--no-event-log", action="store_true")
    p.add_argument("--profile", choices=["none", "py-spy", "strace"], default="none")
    p.add_argument("--out", default="/tmp/grpc-cpu-split", help="the profile's file (default: %(default)s)")
    p.add_argument("--tree", type=Path, default=gb.ROOT, help="the checkout whose router runs")
    p.add_argument("--proxy-cpus", default="0")
    p.add_argument("--load-cpus", default="1")
    p.add_argument("--redis-cpus", help="the CPUs of the private redis-server (default: --load-cpus)")
    p.add_argument(
        "--redis-idle",
        action="store_true",
        help="run it SCHED_IDLE (chrt --idle): it runs when the load side leaves its core idle, as if on another host",
    )
    p.add_argument("--no-settle", action="store_true", help="measure right after the warm-up (as before 2026-12-05)")
    p.add_argument("--probe", action="store_true", help="run the router under bench/loop_probe.py")
    args = p.parse_args()
    from abrouter.router.redis_server import find_binary

    tmp = Path(tempfile.mkdtemp(prefix="grpc-cpu-split-"))
    a, b, grpc_port, http_port, redis_port = (gb.free_port() for _ in range(5))
    (tmp / "exp.yaml").write_text(gb.SPEC.format(a=a, b=b))
    upstream = [gb.PY, str(gb.HERE / "grpc_load.py"), "--serve", f"{a},{b}"]
    redis = [find_binary(), "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no",
             "--dir", str(tmp)]  # fmt: skip
    redis = ["chrt", "--idle", "0", *redis] if args.redis_idle else redis
    head = (
        [gb.PY, str(gb.HERE / "loop_probe.py"), "--out", str(tmp / "probe.json"), "--"]
        if args.probe
        else [gb.PY, "-m", "abrouter"]
    )
    router = [*head, "--log-level", "WARNING", "serve", "--config", str(tmp / "exp.yaml"),
              "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port), "--grpc-server", "own",
              "--spill-dir", str(tmp / "spill")]  # fmt: skip
    router += ["--no-event-log"] if args.no_event_log else ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
    with (
        gb.process(upstream, args.load_cpus, tmp / "upstream.log") as up,
        gb.process(redis, args.redis_cpus or args.load_cpus, tmp / "redis.log") as rd,
        gb.process(router, args.proxy_cpus, tmp / "router.log", args.tree.resolve()) as rt,
    ):
        for port, proc in ((a, up), (b, up), (redis_port, rd), (grpc_port, rt)):
            gb.wait_port(port, proc)
        target = f"127.0.0.1:{grpc_port}"
        gb.load(target, args.load_cpus, "--seconds", "3", "--concurrency", "64")
        settled = 0.0 if args.no_settle else settle(http_port)
        seconds = str(int(args.seconds))
        profiler = None
        if args.profile == "py-spy":
            spy = shutil.which("py-spy") or str(Path(gb.PY).with_name("py-spy"))
            argv = [
                spy,
                "record",
                "--native",
                "-r",
                "250",
                "-p",
                str(rt.pid),
                "-d",
                seconds,
                "-f",
                "raw",
                "-o",
                args.out,
            ]
            profiler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif args.profile == "strace":
            argv = ["timeout", "-s", "INT", seconds, "strace", "-c", "-f", "-p", str(rt.pid), "-o", args.out]
            profiler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        user0, system0 = user_system(rt.pid)
        window0 = time.perf_counter()
        result = gb.load(target, args.load_cpus, "--seconds", str(args.seconds), "--rate", str(args.rate))
        user1, system1 = user_system(rt.pid)
        window1 = time.perf_counter()
        calls = result["calls"] or 1
        result.update(
            user_us_per_call=round((user1 - user0) / calls * 1e6, 1),
            system_us_per_call=round((system1 - system0) / calls * 1e6, 1),
            load_average=os.getloadavg()[0],
            settled_s=round(settled, 1),
        )
        if profiler is not None:
            profiler.wait(timeout=120)
    if args.probe:  # written by the router as it exits
        result["probe"] = loop_probe.summary(json.loads((tmp / "probe.json").read_text()), window0, window1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
