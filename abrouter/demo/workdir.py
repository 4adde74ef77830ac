"""The demo's directory (``--out``): one demo at a time, and nothing left over from the last.

Two demos writing one ``experiment.yaml`` rewrite each other's weights and report each
other's data without a word, so the second refuses to start (a lock, released by the
kernel when the first exits, however it exits). Events a stopped demo left in its spill
file belong to that demo's Redis, which is gone: a new router would replay them into the
fresh Redis as if they were its own, so they are removed, and the demo says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from abrouter.errors import UserError

LOCK_NAME = ".demo.lock"


@contextlib.contextmanager
def claimed(out: Path) -> Iterator[None]:
    """Hold `out` for this demo; a `UserError` if another demo holds it."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            raise UserError(
                f"another abrouter demo (pid {holder}) is running in {out}; wait for it, or give this one "
                "another --out DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def clear_spill(spill_dir: Path) -> int:
    """Remove what an earlier demo left to replay; the bytes removed (0: nothing was there)."""
    if not spill_dir.exists():
        return 0
    size = sum(f.stat().st_size for f in spill_dir.rglob("*") if f.is_file())
    shutil.rmtree(spill_dir)
    return size
