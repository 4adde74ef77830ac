"""The workers' snapshot files (`abrouter.router.workers` says what they are for).

One directory per supervisor, private to it (mode 0700): ``worker-<i>.json`` is worker
i's latest snapshot, written whole to a temporary file and renamed over the old one, so a
reader never sees half of one. When a worker dies the supervisor renames its file to
``retired-<pid>.json``: its counters still count, and the slot reads as missing until
the restarted worker writes its first snapshot.
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


def live_path(directory: Path, index: int) -> Path:
    return directory / f"worker-{index}.json"


def write(directory: Path, snapshot: Snapshot) -> None:
    """Replace worker `snapshot.worker`'s file atomically."""
    final = live_path(directory, snapshot.worker)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    tmp.write_text(workers.to_json(snapshot))
    os.replace(tmp, final)


def read(directory: Path) -> tuple[dict[int, Snapshot], list[Snapshot]]:
    """The live snapshots by worker index, and the retired ones. Unreadable files are skipped."""
    live: dict[int, Snapshot] = {}
    retired: list[Snapshot] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return live, retired
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            snapshot = workers.from_json((directory / name).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue  # renamed away meanwhile, or not ours
        if name.startswith("worker-"):
            live[snapshot.worker] = snapshot
        elif name.startswith("retired-"):
            retired.append(snapshot)
    return live, retired


def retire(directory: Path, index: int, pid: int) -> None:
    """Worker `index` (process `pid`) is gone: its counters keep counting, its slot is empty."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(live_path(directory, index), directory / f"retired-{pid}.json")


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
        eventlog=router.eventlog.stats,
        connections=workers.connections_of(router.guard),
    )
