"""Where the router's CPU per gRPC call goes at a fixed offered load: user and system time per call, profiled.

Starts on 127.0.0.1 the echo upstream and a private redis-server on core 1 (`--load-cpus`), one
``abrouter serve --grpc-port`` (``--grpc-server own``, the spec of `bench/grpc_bench.py`) on core 0
(`--proxy-cpus`), warms it (3 s closed loop), then offers `--rate` unary ``ModelInfer`` calls per second
for `--seconds` (`bench/grpc_load.py`'s open loop) and prints one JSON line: the load's figures and the
router's user and system CPU per call (``/proc/PID/stat``: the split is the kernel's tick sampling, the
sum is exact). ``--profile py-spy`` records the router meanwhile (``py-spy record --native``, collapsed
stacks in ``--out``; py-spy is not a dependency: ``pip install py-spy``), ``--profile strace`` counts its
system calls (``strace -c -f``). ``--tree`` runs the router of another checkout (its compiled build, if
any), as `grpc_bench.py --before` does. ``--no-event-log`` takes the event log out (its share).

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
from pathlib import Path

import grpc_bench as gb


def user_system(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


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
    args = p.parse_args()
    from abrouter.router.redis_server import find_binary

    tmp = Path(tempfile.mkdtemp(prefix="grpc-cpu-split-"))
    a, b, grpc_port, http_port, redis_port = (gb.free_port() for _ in range(5))
    (tmp / "exp.yaml").write_text(gb.SPEC.format(a=a, b=b))
    upstream = [gb.PY, str(gb.HERE / "grpc_load.py"), "--serve", f"{a},{b}"]
    redis = [find_binary(), "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no",
             "--dir", str(tmp)]  # fmt: skip
    router = [gb.PY, "-m", "abrouter", "--log-level", "WARNING", "serve", "--config", str(tmp / "exp.yaml"),
              "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port), "--grpc-server", "own",
              "--spill-dir", str(tmp / "spill")]  # fmt: skip
    router += ["--no-event-log"] if args.no_event_log else ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
    with (
        gb.process(upstream, args.load_cpus, tmp / "upstream.log") as up,
        gb.process(redis, args.load_cpus, tmp / "redis.log") as rd,
        gb.process(router, args.proxy_cpus, tmp / "router.log", args.tree.resolve()) as rt,
    ):
        for port, proc in ((a, up), (b, up), (redis_port, rd), (grpc_port, rt)):
            gb.wait_port(port, proc)
        target = f"127.0.0.1:{grpc_port}"
        gb.load(target, args.load_cpus, "--seconds", "3", "--concurrency", "64")
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
        result = gb.load(target, args.load_cpus, "--seconds", str(args.seconds), "--rate", str(args.rate))
        user1, system1 = user_system(rt.pid)
        calls = result["calls"] or 1
        result.update(
            user_us_per_call=round((user1 - user0) / calls * 1e6, 1),
            system_us_per_call=round((system1 - system0) / calls * 1e6, 1),
            load_average=os.getloadavg()[0],
        )
        if profiler is not None:
            profiler.wait(timeout=120)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
