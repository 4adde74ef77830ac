"""`abrouter` as a real child process, for the tests of long-running commands (``--every``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def abrouter(*args: str, stdout: int = asyncio.subprocess.DEVNULL) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m abrouter ARGS`` from the project's root, its stderr piped; killed if it still
    runs when the block ends (a failed test must not leave it behind)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "abrouter", *args, stdout=stdout, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
