"""`abrouter report`: argument parsing and wiring for the HTML report (`html_report`).

numpy, scipy, Redis, matplotlib and the Kubernetes client are imported only when the
command runs (see `abrouter.analysis.commands`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from abrouter.analysis.commands import add_redis_url
from abrouter.analysis.errors import InputError, SourceError
from abrouter.contract import experiment as spec


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of an experiment (table, plots, decision history)",
        description="Write one HTML file, viewable offline, that shows who won and why it was safe: the arms, "
        "their lifts with fixed-horizon and always-valid intervals, plots over time, and every decision.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help="experiment YAML; data from Redis")
    source.add_argument("--experiment", metavar="NAMESPACE/NAME", help="an Experiment resource; data from Redis")
    p.add_argument("--kubeconfig", type=Path, help="with --experiment: the kubeconfig")
    add_redis_url(p)
    p.add_argument("--out", type=Path, default=Path("report.html"), help="where to write (default: %(default)s)")
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    if args.kubeconfig is not None and args.experiment is None:
        raise InputError("--kubeconfig", "needs --experiment NAMESPACE/NAME")
    experiment = spec.load(args.config) if args.config else _from_kube(args.experiment, args.kubeconfig)
    text = asyncio.run(_render(experiment, args.redis_url))
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    print(f"abrouter: report written to {args.out}")
    return 0


def _from_kube(ref: str, kubeconfig: Path | None) -> spec.Experiment:
    from abrouter.contract import resource
    from abrouter.kube.client import KubeClient, Ref

    client = KubeClient.from_config(kubeconfig, role="analyzer")
    try:
        return resource.parse(client.get(Ref.parse(ref))).experiment
    finally:
        client.close()


async def _render(experiment: spec.Experiment, redis_url: str) -> str:
    import numpy as np

    from abrouter.analysis import analyzer, history, html_report, reader
    from abrouter.analysis.connection import RedisConnection
    from abrouter.contract import keys as schema

    connection = RedisConnection(redis_url)
    try:
        client = await connection.client(experiment.name)
        keys = schema.Keys(experiment.name)
        data = await reader.read(client, experiment, keys=keys)
        last = await history.last(client, keys)
        seed = last.previous(sum(a.units for a in data.arms)) if last is not None else {}
        # The same look `analyze` would take now, written nowhere.
        result = analyzer.analyze(data, now=time.time(), previous=seed, rng=np.random.default_rng(0))
        entries = await history.entries(client, keys)
    finally:
        await connection.aclose()
    return html_report.render(experiment, result, entries)
