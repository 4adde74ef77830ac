"""The demo's child processes: the real `abrouter serve` and `abrouter analyze`.

Each runs in its own session, so a Ctrl-C at the terminal reaches the demo alone, which
stops them (SIGTERM, then SIGKILL) and says so in one line; their logs go to files in the
demo's directory, quoted when a child fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from abrouter.errors import AbrouterError

#: A loaded machine takes long to start Python processes: patient, but not forever.
START_TIMEOUT_S = 120.0


class ChildFailed(AbrouterError):
    """A child process exited or never became ready; the message quotes its log."""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "abrouter", "--log-level", "WARNING", *args]


@contextlib.asynccontextmanager
async def process(argv: list[str], *, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process that is stopped (SIGTERM, then SIGKILL) whatever happens; stderr to `log`."""
    # A fresh secret per demo: request ids cannot be forged, and serve has nothing to warn about.
    env = {**os.environ, "ABROUTER_SECRET": os.environ.get("ABROUTER_SECRET") or secrets.token_hex(32)}
    with log.open("w") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        await stop(proc)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(text)


async def wait_ready(base: str, router: asyncio.subprocess.Process, *, log: Path) -> float:
    """Wait for the router's /abrouter/readyz; the seconds it took."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - started < START_TIMEOUT_S:
            if router.returncode is not None:
                raise ChildFailed(f"abrouter serve exited with code {router.returncode}: {tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(f"{base}/abrouter/readyz") as r:
                    if r.status == 200:
                        return time.monotonic() - started
            await asyncio.sleep(0.1)
    raise ChildFailed(f"abrouter serve was not ready within {START_TIMEOUT_S:.0f} s: {tail(log)}")
