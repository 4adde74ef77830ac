"""`abrouter analyze` over several experiments: ``--config`` given more than once, or ``--experiments NAMESPACE``.

The rosters and targets `abrouter.analysis.fleet` drives, and the wiring: one Redis
connection, one Kubernetes client and (with ``--lease``) one `LeaderElector` for the
whole process. Each look is the one a single ``abrouter analyze --config FILE`` or
``--experiment NAMESPACE/NAME`` makes (`runner.look_file`, `runner.look_kube`), so one
experiment's output, history and writes are the same whichever way it is looked at.

Without ``--every`` every experiment is looked at once, in order, and the exit code is the
worst of theirs. With ``--every`` the fleet runs until SIGTERM, which ends it between two
looks with exit code 0; the leader then releases its Lease (Ctrl-C is exit code 130, as for
every command, and releases it too).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from abrouter.analysis import runner
from abrouter.analysis.connection import RedisConnection
from abrouter.analysis.fleet import Fleet, Target
from abrouter.analysis.schedule import Schedule
from abrouter.analysis.sinks.base import DryRunSink, WeightsSink
from abrouter.analysis.sinks.file import FileSink
from abrouter.analysis.specfiles import SpecFiles
from abrouter.analysis.witness import FileWitness

if TYPE_CHECKING:
    from abrouter.analysis.sinks.kube import KubeSink
    from abrouter.kube.client import KubeClient, Ref

log = logging.getLogger("abrouter.analyzer")


@dataclass
class Output:
    """What every look shares: the Redis connection and how results are printed."""

    redis: RedisConnection
    url: str
    as_json: bool


@dataclass
class FileTarget:
    """An experiment YAML: read from Redis, decisions (with --apply) written to the file."""

    path: Path
    out: Output
    apply: bool
    files: SpecFiles
    key: str = ""

    def __post_init__(self) -> None:
        self.key = str(self.path)
        self.sink: WeightsSink = FileSink(self.path) if self.apply else DryRunSink()
        self.witness = FileWitness.beside(self.path) if self.apply else None

    async def look(self) -> int:
        o = self.out
        return await runner.look_file(
            o.redis, self.path, self.sink, self.witness, as_json=o.as_json, url=o.url, load=self.files.load
        )


@dataclass
class FileRoster:
    files: dict[str, Target]

    async def targets(self) -> Mapping[str, Target]:
        return self.files


@dataclass
class KubeTarget:
    """An Experiment resource, through `KubeSink` (`runner.look_kube`)."""

    sink: KubeSink
    out: Output
    apply: bool
    key: str = ""

    def __post_init__(self) -> None:
        self.key = str(self.sink.ref)

    async def look(self) -> int:
        o = self.out
        return await runner.look_kube(o.redis, self.sink, apply=self.apply, as_json=o.as_json, url=o.url)


@dataclass
class KubeRoster:
    """The Experiments of a namespace (matching `selector`), listed again at each refresh.

    A list per refresh rather than a watch: each experiment is looked at on its schedule
    anyway, so a watch would not bring a new one's first look forward; a list cannot miss
    a deletion, and costs one request per interval. A deleted Experiment is dropped at the
    next list (a look in between fails with its 404, and backs off).
    """

    client: KubeClient
    namespace: str
    selector: str
    make: Callable[[Ref], Target]
    known: dict[str, Target] = field(default_factory=dict)

    async def targets(self) -> Mapping[str, Target]:
        from abrouter.kube.client import Ref

        items, _ = await asyncio.to_thread(self.client.list_experiments, self.namespace, selector=self.selector)
        names = sorted(str(o["metadata"]["name"]) for o in items)
        # The same target object for an experiment already known: its sink keeps what it knows.
        self.known = {
            key: self.known.get(key) or self.make(Ref(self.namespace, name))
            for key, name in ((f"{self.namespace}/{n}", n) for n in names)
        }
        return self.known


async def analyze_many(args: argparse.Namespace, files: SpecFiles | None = None) -> int:
    """`files`: the --config files as the command validated them (parsed once, not again at the first look)."""
    out = Output(RedisConnection(args.redis_url, args.redis_timeout), args.redis_url, args.json)
    kube: KubeClient | None = None
    try:
        if args.experiments is not None:
            from abrouter.kube.client import KubeClient  # seconds of imports: only for --experiments

            kube = KubeClient.from_config(args.kubeconfig, role="analyzer")
        fleet = build(args, out, kube, files or SpecFiles())
        if args.every is None:
            code = await fleet.once()
            if not fleet.targets:
                where = f"namespace {args.experiments}" + (f" matching {args.selector!r}" if args.selector else "")
                print(f"abrouter: no Experiment in {where}", file=sys.stderr, flush=True)
            return code
        await _run(fleet, kube, args)
        return 0
    finally:
        await out.redis.aclose()
        if kube is not None:
            kube.close()


def build(args: argparse.Namespace, out: Output, kube: KubeClient | None, files: SpecFiles) -> Fleet:
    """The fleet the arguments ask for (files, or with `kube` a namespace's Experiments); no I/O yet."""
    if kube is not None:
        roster: FileRoster | KubeRoster = _kube_roster(kube, args, out)
    else:
        roster = FileRoster({str(p): FileTarget(p, out, args.apply, files) for p in args.config})
    return Fleet(roster, Schedule(args.every or 60.0))


def _kube_roster(kube: KubeClient, args: argparse.Namespace, out: Output) -> KubeRoster:
    from abrouter.analysis.sinks.kube import KubeSink

    apply = args.apply or args.dry_run  # --dry-run shows what --apply would write

    def make(ref: Ref) -> Target:
        return KubeTarget(KubeSink(kube, ref, dry_run=args.dry_run), out, apply)

    return KubeRoster(kube, args.experiments, args.selector or "", make)


async def _run(fleet: Fleet, kube: KubeClient | None, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    election: asyncio.Task[None] | None = None
    if args.lease is not None:
        from abrouter.kube.election import ElectionSettings
        from abrouter.kube.leader import LeaderElector

        assert kube is not None
        elector = LeaderElector(
            kube, args.experiments, identity=identity(), settings=ElectionSettings(lease=args.lease)
        )
        fleet.leader = elector
        election = asyncio.create_task(elector.run(stop))
    try:
        await fleet.run(stop)
    finally:
        stop.set()
        loop.remove_signal_handler(signal.SIGTERM)
        if election is not None:
            await election  # releases the Lease if this process holds it
    log.info("stopped after %d looks (%d failed)", fleet.schedule.looked, fleet.schedule.failed)


def identity() -> str:
    """This candidate's name in the Lease: the pod's name (its hostname) and a random suffix, as client-go does."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
