"""`abrouter report`: argument parsing and wiring for the HTML report (`html_report`).

numpy, scipy, Redis, matplotlib and the Kubernetes client are imported only when the
command runs (see `abrouter.analysis.commands`).
"""

from __future__ import annotations

import argparse
import asyncio
import html
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
    source.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        action="append",
        help="experiment YAML; data from Redis. Give it once per experiment: with several, --out is a "
        "directory that gets NAME.html per experiment and an index.html",
    )
    source.add_argument("--experiment", metavar="NAMESPACE/NAME", help="an Experiment resource; data from Redis")
    p.add_argument("--kubeconfig", type=Path, help="with --experiment: the kubeconfig")
    add_redis_url(p)
    p.add_argument(
        "--out", type=Path, help="where to write (default: report.html; with several --config, the directory reports/)"
    )
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    if args.kubeconfig is not None and args.experiment is None:
        raise InputError("--kubeconfig", "needs --experiment NAMESPACE/NAME")
    experiments = [spec.load(c) for c in args.config] if args.config else [_from_kube(args.experiment, args.kubeconfig)]
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise InputError("--config", f"two files name the same experiment: {sorted(names)}")
    if len(experiments) == 1:
        out = args.out or Path("report.html")
        _write(out, asyncio.run(_render(experiments[0], args)))
        print(f"abrouter: report written to {out}")
        return 0
    directory = args.out or Path("reports")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(f"cannot make the directory {directory}: {exc.strerror or exc}") from exc
    for experiment in experiments:
        _write(directory / f"{experiment.name}.html", asyncio.run(_render(experiment, args)))
    _write(directory / "index.html", _index(names))
    print(f"abrouter: {len(experiments)} reports and index.html written to {directory}/")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _index(names: list[str]) -> str:
    """A page linking every experiment's report."""
    items = "".join(f'<li><a href="{html.escape(n)}.html">{html.escape(n)}</a></li>' for n in sorted(names))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>abrouter reports</title></head>'
        f"<body><h1>abrouter: {len(names)} experiments</h1><ul>{items}</ul></body></html>\n"
    )


def _from_kube(ref: str, kubeconfig: Path | None) -> spec.Experiment:
    from abrouter.contract import resource
    from abrouter.kube.client import KubeClient, Ref

    client = KubeClient.from_config(kubeconfig, role="analyzer")
    try:
        return resource.parse(client.get(Ref.parse(ref))).experiment
    finally:
        client.close()


async def _render(experiment: spec.Experiment, args: argparse.Namespace) -> str:
    import numpy as np

    from abrouter.analysis import analyzer, history, html_report, reader
    from abrouter.analysis.connection import RedisConnection
    from abrouter.contract import keys as schema

    connection = RedisConnection(args.redis_url, args.redis_timeout)
    try:
        client = await connection.client(experiment.name)
        keys = schema.Keys(experiment.name)
        data = await reader.read(client, experiment, keys=keys)
        last = await history.last(client, keys)
        seed = last.previous(sum(a.units for a in data.arms)) if last is not None else {}
        # The same look `analyze` would take now, written nowhere.
        promoted = last.promoted if last is not None else None
        result = analyzer.analyze(data, now=time.time(), previous=seed, rng=np.random.default_rng(0), promoted=promoted)
        entries = await history.entries(client, keys)
    finally:
        await connection.aclose()
    return html_report.render(experiment, result, entries)
