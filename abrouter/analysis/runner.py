"""`abrouter analyze` at work: one look, or one every N seconds, from Redis, a summary or a resource.

The heavy half of `abrouter.analysis.commands`, imported only when `analyze` runs (numpy,
scipy, redis, and the Kubernetes client only for ``--experiment``), so that `abrouter
serve` and `abrouter --help` never pay for them. A Redis or file failure
(`SourceError`, `ConflictError`) is one line and exit code 1, and ``--every`` keeps going
after it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from abrouter.analysis import analyzer, report, service, summary
from abrouter.analysis.connection import RedisConnection
from abrouter.analysis.errors import ConflictError, SourceError, UnfinishedError
from abrouter.analysis.sinks.base import DryRunSink, WeightsSink
from abrouter.analysis.sinks.file import FileSink
from abrouter.analysis.witness import FileWitness
from abrouter.contract import experiment as spec
from abrouter.kube.errors import KubeError
from abrouter.redact import mask_url

if TYPE_CHECKING:
    from abrouter.analysis.sinks.kube import KubeSink


def analyze_summary(path: Path, *, as_json: bool, out: TextIO) -> int:
    now = time.time()
    for data, elapsed in summary.load(path):
        if elapsed is not None:
            data = dataclasses.replace(data, started_at=now - elapsed)
        # A fixed seed makes a summary's result (the bandit's Monte Carlo) reproducible.
        result = analyzer.analyze(data, now=now, rng=np.random.default_rng(0))
        _print(result, as_json=as_json, out=out)
    return 0


async def analyze_redis(args: argparse.Namespace) -> int:
    client = RedisConnection(args.redis_url, args.redis_timeout)
    sink: WeightsSink = FileSink(args.config[0]) if args.apply else DryRunSink()
    # The witness goes where the decisions go: beside the spec file, with --apply only.
    witness = FileWitness.beside(args.config[0]) if args.apply else None
    try:
        while True:
            code = await look_file(client, args.config[0], sink, witness, as_json=args.json, url=args.redis_url)
            if args.every is None:
                return code
            await asyncio.sleep(args.every)
    finally:
        await client.aclose()


async def look_file(
    client: RedisConnection,
    config: Path,
    sink: WeightsSink,
    witness: FileWitness | None,
    *,
    as_json: bool,
    url: str,
    load: Callable[[Path], spec.Experiment] = spec.load,
) -> int:
    """Read (the spec through `load`), analyze, record and (maybe) apply; a runtime failure is one line and exit 1."""
    try:
        experiment = load(config)
        result = await service.look(await client.client(experiment.name), experiment, sink=sink, witness=witness)
    except SourceError as exc:
        return _fail(f"{exc} (Redis at {mask_url(url)})", 1)
    except ConflictError as exc:
        return _fail(str(exc), 1)
    except spec.ConfigError as exc:  # edited into something invalid while --every runs
        return _fail(str(exc), 2)
    _print(result, as_json=as_json, out=sys.stdout)
    return 0


async def analyze_kube(args: argparse.Namespace) -> int:
    # The Kubernetes client costs seconds to import on a busy machine: only for --experiment.
    from abrouter.analysis.sinks.kube import KubeSink
    from abrouter.kube.client import KubeClient, Ref

    ref = Ref.parse(args.experiment)
    sink = KubeSink(KubeClient.from_config(args.kubeconfig, role="analyzer"), ref, dry_run=args.dry_run)
    client = RedisConnection(args.redis_url, args.redis_timeout)
    try:
        while True:
            # --dry-run shows what --apply would write, so it implies the --apply path.
            apply = args.apply or args.dry_run
            code = await look_kube(client, sink, apply=apply, as_json=args.json, url=args.redis_url)
            if args.every is None:
                return code
            await asyncio.sleep(args.every)
    finally:
        await client.aclose()
        sink.client.close()


async def look_kube(client: RedisConnection, sink: KubeSink, *, apply: bool, as_json: bool, url: str) -> int:
    """Read the resource, look, and with `apply` write weights, status and Events; failures are one line."""
    from abrouter.analysis import kube_look  # the Kubernetes client: only for --experiment

    try:
        result = await kube_look.look(await client.client(sink.ref.name), sink, apply=apply)
    except UnfinishedError as exc:  # before SourceError: it may wrap one, and says what was applied
        return _fail(str(exc), 1)
    except SourceError as exc:
        return _fail(f"{exc} (Redis at {mask_url(url)})", 1)
    except (ConflictError, KubeError) as exc:
        return _fail(str(exc), 1)
    except spec.ConfigError as exc:  # the resource's spec is invalid (kubectl edit)
        return _fail(f"Experiment {sink.ref}: {exc}", 2)
    _print(result, as_json=as_json, out=sys.stdout)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"abrouter: error: {message}", file=sys.stderr, flush=True)
    return code


def _print(result: analyzer.AnalysisResult, *, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(result.to_dict(), sort_keys=False) + "\n")
    else:
        out.write(report.render(result))
    out.flush()
