"""Spill files: batches that could not reach Redis, kept on local disk until it returns.

One append-only file per producer, ``<stem>.<producer>.spill`` in the spill directory,
where the stem names the key prefix and experiment, so routers of different experiments
can share a directory. Each line is one whole `events.Batch`: a JSON header (producer,
seq, n), a tab, the payload, a tab, the raw events (both JSON texts, which hold no raw
tab or newline) and, from batch format 6, a tab and the packed cells in base64, so that
neither writing nor replaying a 50k-event line re-escapes megabytes of JSON inside a JSON
string (that held the event loop ~25 ms per line).
Lines of the older format (the whole batch as one JSON object) are still read. Every
append is fsync'd before it counts as written.

The owner holds an exclusive ``flock`` on its file for its whole life. A file whose lock
can be taken therefore belongs to a dead producer (the kernel drops a lock with its
process), and any new router of the same experiment may replay and delete it:
`claim_orphans`. Replaying twice is harmless, because flush.lua applies each
(producer, seq) once.

A *quarantine* file, ``<stem>.<producer>q.quarantine``, has the same format: the batches
Redis refused (`abrouter.router.errors.BatchRejected`), under their own (producer, seq).
Nothing replays it on its own. Once the cause is fixed, renaming it to ``.spill`` makes
it an orphan that the next router to start replays; Redis remembers the seqs each
producer skipped (`abrouter.contract.keys`), so each batch applies once however often
it is replayed.

Every file is capped at `MAX_BYTES` (`SpillFull`): beyond it, batches are lost and
counted (``abrouter_eventlog_spill_full_events_total``) rather than filling the disk.

Blocking file I/O: the event log calls `SpillFile.append` and `clear` in a thread.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from abrouter.router.eventlog.events import Batch

log = logging.getLogger(__name__)

SUFFIX = ".spill"
#: Default cap of one spill (or quarantine) file. At ~230 bytes per event that is ~1.1M
#: events, about 2 minutes of a Redis outage at 10k req/s; k8s/ gives the spill
#: directory a 1 GiB emptyDir, so the cap keeps the pod from being evicted for disk.
MAX_BYTES = 256 * 1024 * 1024
QUARANTINE_SUFFIX = ".quarantine"
_CREATING = ".creating"


class SpillFull(OSError):
    """The spill file reached its size cap: the batches are not written (and are lost)."""


def stem(prefix: str, experiment: str) -> str:
    return f"{prefix}.{experiment}"


def encode(batch: Batch) -> bytes:
    header = json.dumps({"producer": batch.producer, "seq": batch.seq, "n": batch.n_events}, separators=(",", ":"))
    fields: tuple[str, ...] = (header, batch.payload, batch.events)
    if batch.cells:  # [issue 15] packed cells (batch format 6), in base64: no raw tab or newline
        fields += (base64.b64encode(batch.cells).decode(),)
    return "\t".join(fields).encode() + b"\n"


def decode(line: bytes) -> Batch:
    cells = b""
    if b"\t" not in line:  # the older format: one JSON object
        doc = json.loads(line)
        payload, events = doc["payload"], doc["events"]
    else:
        head, raw_payload, raw_events, *packed = line.rstrip(b"\n").split(b"\t", 3)
        doc, payload, events = json.loads(head), raw_payload.decode(), raw_events.decode()
        cells = base64.b64decode(packed[0], validate=True) if packed else b""
    if not isinstance(payload, str) or not isinstance(events, str):
        raise TypeError("payload and events must be text")
    return Batch(
        producer=doc["producer"],
        seq=int(doc["seq"]),
        payload=payload,
        events=events,
        n_events=int(doc["n"]),
        cells=cells,
    )


def read_batches(path: Path, offset: int = 0) -> Iterator[tuple[Batch, int]]:
    """Batches from byte `offset` on, each with the offset just after it.

    A line that does not parse can only be the tail of an append torn by a crash; it
    was never acknowledged as written, so it is skipped.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            offset += len(line)
            if not line.endswith(b"\n"):
                log.warning("spill %s: skipping a torn last line (%d bytes)", path, len(line))
                return
            try:
                yield decode(line), offset
            except (ValueError, KeyError, TypeError):
                log.warning("spill %s: skipping an unreadable line at byte %d", path, offset - len(line))


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpillFile:
    """This producer's spill file: created on the first append, locked until `close`.

    `replayed` is the byte offset up to which batches have reached Redis, so a replay
    interrupted by another outage resumes instead of starting over.
    """

    def __init__(
        self, directory: Path, *, stem: str, producer: str, suffix: str = SUFFIX, max_bytes: int = MAX_BYTES
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.producer = producer
        self.path = directory / f"{stem}.{producer}{suffix}"
        self._fd: int | None = None
        self._size = 0
        self.replayed = 0
        self.pending_batches = 0
        self.pending_events = 0

    def append(self, batches: Sequence[Batch]) -> None:
        """Write and fsync; on OSError the file is cut back, so no torn line stays.

        `SpillFull` (nothing written) when the file would grow beyond `max_bytes`.
        """
        data = b"".join(encode(b) for b in batches)
        if self._size + len(data) > self.max_bytes:
            raise SpillFull(f"{self.path} would exceed its cap of {self.max_bytes} bytes")
        fd = self._open()
        try:
            os.write(fd, data)  # O_APPEND; a short write raises or is completed below
            written = os.fstat(fd).st_size - self._size
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, self._size)
            raise
        self._size += len(data)
        self.pending_batches += len(batches)
        self.pending_events += sum(b.n_events for b in batches)

    @property
    def size(self) -> int:
        return self._size

    def unreplayed(self) -> Iterator[tuple[Batch, int]]:
        if self._fd is None or self.replayed >= self._size:
            return iter(())
        return read_batches(self.path, self.replayed)

    def mark_replayed(self, batch: Batch, offset: int) -> None:
        self.replayed = offset
        self.pending_batches = max(0, self.pending_batches - 1)
        self.pending_events = max(0, self.pending_events - batch.n_events)

    def clear(self) -> None:
        """Empty the file once every batch in it has reached Redis."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        self._size = self.replayed = self.pending_batches = self.pending_events = 0

    def close(self) -> None:
        """Unlock; delete the file if empty, else leave it as an orphan to replay."""
        if self._fd is None:
            return
        if self.pending_batches == 0:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        self.directory.mkdir(parents=True, exist_ok=True)
        # Lock under a name orphan scans ignore, then rename: a scan must never find
        # our file unlocked and take it for a dead producer's.
        creating = self.path.with_name(self.path.name + _CREATING)
        fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(creating, self.path)
        _fsync_dir(self.directory)
        self._fd = fd
        return fd


class Orphan:
    """A dead producer's spill file, locked by us while we replay it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def batches(self) -> Iterator[tuple[Batch, int]]:
        return read_batches(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        os.close(self._fd)


def claim_orphans(directory: Path, *, stem: str, own: Path) -> list[Orphan]:
    """Lock and return the spill files of dead producers of this experiment."""
    if not directory.is_dir():
        return []
    orphans = []
    for path in sorted(directory.glob(f"{stem}.*{SUFFIX}")):
        if path == own:
            continue
        orphan = _claim(path)
        if orphan is not None:
            orphans.append(orphan)
    return orphans


def _claim(path: Path) -> Orphan | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None  # another router replayed it a moment ago
    try:
        # Locked means alive. Unlocked but unlinked means another router claimed and
        # finished it between our open and our lock.
        if _lock(fd) and _same_file(fd, path):
            return Orphan(path, fd)
    except OSError:
        pass
    os.close(fd)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
