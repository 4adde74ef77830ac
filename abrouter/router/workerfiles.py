"""The workers' snapshot files (`abrouter.router.workers` says what they are for).

One directory per supervisor, private to it (mode 0700): ``worker-<i>.json`` is worker
i's latest snapshot, written whole to a temporary file and renamed over the old one, so a
reader never sees half of one. When a worker dies the supervisor adds its last snapshot
to ``retired.json`` (the counters of every worker that died) and removes its file: its
counters still count, and the slot reads as missing until the restarted worker writes
its first snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from abrouter.router import workers
from abrouter.router.state import Router
from abrouter.router.workers import Snapshot, WorkerSlot

log = logging.getLogger("abrouter.workers")


#: The sum of the workers that died (`workers.retire`).
RETIRED = "retired.json"


def live_path(directory: Path, index: int) -> Path:
    return directory / f"worker-{index}.json"


def write(directory: Path, snapshot: Snapshot) -> None:
    """Replace worker `snapshot.worker`'s file atomically."""
    final = live_path(directory, snapshot.worker)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    tmp.write_text(workers.to_json(snapshot))
    os.replace(tmp, final)


def read(directory: Path) -> tuple[dict[int, Snapshot], list[Snapshot]]:
    """The live snapshots by worker index, and the sum of the retired workers (a list of 0 or 1)."""
    retired = _read(directory / RETIRED)
    gone = set(retired.retired_pids) if retired else set()
    live: dict[int, Snapshot] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in names:
        if name.startswith("worker-") and name.endswith(".json"):
            snapshot = _read(directory / name)
            if snapshot is not None and snapshot.pid not in gone:
                live[snapshot.worker] = snapshot
    return live, [retired] if retired else []


def retire(directory: Path, index: int, pid: int) -> None:
    """Worker `index` (process `pid`) is gone: its last counters join the retired sum, its slot empties.

    The sum (naming `pid`) is in place before the worker's file goes, and a reader skips a
    file of a pid the sum names: no scrape counts the worker twice or not at all.
    """
    path = live_path(directory, index)
    dead = _read(path)
    if dead is None or dead.pid != pid:
        return  # it never wrote one (or a newer worker did)
    previous = _read(directory / RETIRED)
    if previous is None or pid not in previous.retired_pids:
        total = workers.retire(previous, dead)
        tmp = directory / f".{RETIRED}.tmp"
        tmp.write_text(workers.to_json(total))
        os.replace(tmp, directory / RETIRED)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _read(path: Path) -> Snapshot | None:
    try:
        return workers.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None  # gone meanwhile, or not ours


@contextlib.asynccontextmanager
async def publishing(slot: WorkerSlot, capture: Callable[[float], Snapshot]) -> AsyncIterator[None]:
    """Write `capture(now)` now, every `SNAPSHOT_INTERVAL_S`, and once more on exit."""

    def once() -> None:
        try:
            write(slot.directory, capture(time.time()))
        except OSError as exc:  # a full disk must not stop the serving
            log.warning("worker %d: cannot write its metrics snapshot: %s", slot.index, exc)

    async def loop() -> None:
        while True:
            await asyncio.sleep(workers.SNAPSHOT_INTERVAL_S)
            once()

    once()
    task = asyncio.create_task(loop(), name="abrouter-worker-snapshots")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        once()


def snapshot_of(router: Router, slot: WorkerSlot, now: float) -> Snapshot:
    """This worker's counters now (the live objects are shared, not copied: serialize at once)."""
    return Snapshot(
        worker=slot.index,
        pid=os.getpid(),
        written=now,
        metrics=router.metrics,
        eventlog=router.eventlog_stats(),
        connections=workers.connections_of(router.guard),
    )
