"""The analyzer's CPU and memory for one pass over many experiments: one process for all, or one each.

Starts a private `RedisServer` (loopback only) and seeds ``--experiments`` experiments the
way the tests seed them (`tests.analysis.test_commands.write_arms`: epoch 1 at 50/50, one
request per unit, no errors, latency 20 ± 10 ms; units and conversions drawn per
experiment from a seeded generator), each with its own config file (the bundled example
spec under its own name). Then it runs the real CLI in a child process and reads the
child's CPU time (user + system) and peak RSS from ``wait4``:

- **one process**: ``abrouter analyze --config F1 ... --config FN --json`` (one look at
  each experiment, as a pass of the analyzer Deployment makes it);
- **one process per experiment**: ``abrouter analyze --config Fi --json`` for the first
  ``--single`` experiments (what N CronJobs or N processes would cost), averaged.

The per-look cost is the difference between the one-process run and one single run,
divided by N - 1. Every look appends to its experiment's history in Redis (no
``--apply``: the config files stay as they are).

With ``--kube``, the experiments are Experiment resources in the project's Kubernetes API
test server (`tests.kube.apiserver`, in a thread of this process, not of the measured
one) and the runs are ``abrouter analyze --experiments NAMESPACE`` (one list, then per
Experiment a GET and the look) and ``--experiment NAMESPACE/NAME`` alone.

    .venv/bin/python bench/analyzer_fleet.py --experiments 1000 --single 5
    .venv/bin/python bench/analyzer_fleet.py --experiments 1000 --single 5 --kube
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from abrouter.contract import experiment as spec
from abrouter.router import examples
from abrouter.router.redis_server import RedisServer


@dataclass(frozen=True)
class Usage:
    cpu_s: float
    peak_rss_mib: float
    wall_s: float
    code: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", type=int, default=1000, help="experiments in the pass (default: 1000)")
    p.add_argument("--single", type=int, default=5, help="single-experiment runs to average (default: 5)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kube", action="store_true", help="Experiment resources through the API test server")
    return p.parse_args(argv)


def seed(client: redis.Redis, name: str, rng: np.random.Generator) -> None:
    """Epoch 1 at 50/50, written as the tests write it (`tests.analysis.test_commands.write_arms`)."""
    from tests.analysis.test_commands import write_arms

    arms = {}
    for variant in ("control", "candidate"):
        units = int(rng.integers(2_000, 40_000))
        arms[variant] = (units, int(rng.binomial(units, 0.05)), 20.0)
    write_arms(client, name, arms, weights={"control": 50, "candidate": 50})


def write_configs(folder: Path, names: list[str]) -> list[Path]:
    doc = spec.to_dict(spec.load(examples.EXPERIMENT_PATH))
    paths = []
    for name in names:
        doc["name"] = doc["salt"] = name
        path = folder / f"{name}.yaml"
        path.write_text(json.dumps(doc))  # JSON is YAML
        paths.append(path)
    return paths


def run(source: list[str], url: str) -> Usage:
    argv = [sys.executable, "-m", "abrouter", "analyze", "--redis-url", url, "--json", *source]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"abrouter analyze exited {proc.returncode}: {err.decode()[-2000:]}")
    return Usage(
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024,
        wall_s=time.perf_counter() - started,
        code=proc.returncode,
    )


def run_kube(names: list[str], url: str, tmp: Path, single: int) -> tuple[list[Usage], Usage]:
    """The runs against Experiment resources in the API test server (imported from tests/ only here)."""
    from tests.kube.apiserver import NAMESPACE, PLURAL, KubeApiServer
    from tests.kube.conftest import experiment_object

    api = KubeApiServer().start()
    try:
        for name in names:
            api.put(PLURAL, NAMESPACE, experiment_object(name))
        config = ["--kubeconfig", str(api.kubeconfig(tmp / "kubeconfig", namespace=NAMESPACE))]
        singles = [run([*config, "--experiment", f"{NAMESPACE}/{n}"], url) for n in names[:single]]
        return singles, run([*config, "--experiments", NAMESPACE], url)
    finally:
        api.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    names = [f"bench-fleet-{i:05d}" for i in range(args.experiments)]
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="abrouter-fleet-") as tmp:
        client = redis.Redis.from_url(server.url)
        for name in names:
            seed(client, name, rng)
        client.close()
        if args.kube:
            singles, fleet = run_kube(names, server.url, Path(tmp), args.single)
        else:
            paths = write_configs(Path(tmp), names)
            singles = [run(["--config", str(p)], server.url) for p in paths[: args.single]]
            fleet = run([a for p in paths for a in ("--config", str(p))], server.url)
    one = Usage(
        cpu_s=float(np.mean([u.cpu_s for u in singles])),
        peak_rss_mib=float(np.mean([u.peak_rss_mib for u in singles])),
        wall_s=float(np.mean([u.wall_s for u in singles])),
        code=0,
    )
    n = args.experiments
    per_look_ms = (fleet.cpu_s - one.cpu_s) / max(1, n - 1) * 1000
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    source = "Experiment resources (--experiments)" if args.kube else "config files (--config)"
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, {stamp}; {source}")
    print()
    print("| run | experiments | CPU s | peak RSS MiB | wall s |")
    print("|---|---|---|---|---|")
    each = f"one process per experiment (mean of {len(singles)})"
    print(f"| {each} | 1 | {one.cpu_s:.2f} | {one.peak_rss_mib:.0f} | {one.wall_s:.2f} |")
    print(f"| one process for all | {n} | {fleet.cpu_s:.2f} | {fleet.peak_rss_mib:.0f} | {fleet.wall_s:.2f} |")
    print()
    print(f"per look: {per_look_ms:.1f} ms CPU; start-up: {one.cpu_s - per_look_ms / 1000:.2f} s CPU")
    print(f"{n} experiments, one process each: {n * one.cpu_s:.0f} s CPU; in one process: {fleet.cpu_s:.1f} s CPU")


if __name__ == "__main__":
    main()
