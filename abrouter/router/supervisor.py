"""`abrouter serve --workers N` (N > 1): one listening socket, N worker processes serving it.

The supervisor binds the socket once, then forks the workers before any event loop
exists; each runs `serving.run` on the shared socket with its own runtime (its own event
log producer and spill file, its own upstream connections). It forwards SIGTERM and SIGINT
to them and waits while each drains and flushes, as a single router does; it exits 0
when every worker exited cleanly. A worker that dies otherwise is logged and restarted
after a short backoff (`workers.backoff_s`). Long-lived helpers (the example models of
`abrouter serve` without --config) run once, in a process of their own, not per worker.

The workers publish their counters to a private directory (`abrouter.router.workerfiles`),
from which any worker's /abrouter/metrics and /abrouter/readyz speak for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

from abrouter.router import serving, workerfiles, workers
from abrouter.router.workers import WorkerSlot

log = logging.getLogger("abrouter.supervisor")

Companion = Callable[[], AbstractAsyncContextManager[object]]
#: How long the supervisor polls for exited children.
_POLL_S = 0.05
#: Beyond the workers' own drain timeout, how long the supervisor waits before it kills them.
_KILL_GRACE_S = 15.0
#: prctl(2): the signal a child gets when its parent dies.
_PR_SET_PDEATHSIG = 1


@dataclass
class _Child:
    name: str
    start: Callable[[], int]
    pid: int = 0
    started: float = 0.0
    quick_deaths: int = 0
    #: When a dead child is to be started again (0: it is running).
    due: float = 0.0
    #: The worker slot, for a worker (None: the companions).
    index: int | None = None


def run(
    plan_for: Callable[[], serving.Plan],
    *,
    count: int,
    host: str,
    port: int,
    companions: list[Companion] | None = None,
    on_listening: Callable[[int], None] | None = None,
    shutdown_timeout_s: float = 30.0,
    backlog: int = 1024,
) -> int:
    """Serve with `count` worker processes until SIGTERM or SIGINT; the exit status.

    `plan_for` is called in each worker after the fork (so a worker's spec source opens its
    own connections); its `sock` and `worker` are set here.
    """
    sock = socket.create_server((host, port), backlog=backlog)
    directory = Path(tempfile.mkdtemp(prefix="abrouter-workers-"))
    stopping: list[int] = []
    children: list[_Child] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            log.info("signal %d: stopping %d workers (each drains, then flushes)", signum, count)
        stopping.append(signum)
        for child in children:
            if child.pid and not child.due:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if companions:
            children.append(_Child("example models", lambda: _fork_companions(companions)))
        for i in range(count):
            slot = WorkerSlot(index=i, count=count, directory=directory)
            children.append(_Child(f"worker {i}", _worker_starter(plan_for, sock, slot), index=i))
        for child in children:
            if not stopping:
                _start(child)
        if on_listening is not None:
            on_listening(sock.getsockname()[1])
        return _supervise(children, directory, stopping, drain_budget_s=shutdown_timeout_s + _KILL_GRACE_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def _supervise(children: list[_Child], directory: Path, stopping: list[int], *, drain_budget_s: float) -> int:
    """Reap, restart, and after a signal wait for all to exit; 0 when every worker exited cleanly."""
    clean = True
    kill_at: float | None = None
    while True:
        now = time.monotonic()
        for child in children:
            if not child.pid or child.due:
                continue
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid == 0:
                continue
            code = os.waitstatus_to_exitcode(status)
            if child.index is not None:
                workerfiles.retire(directory, child.index, pid)
            if stopping:
                child.pid = 0
                # -SIGTERM: the signal came before the worker's loop could handle it (nothing to drain).
                if code not in (0, -signal.SIGTERM) and child.index is not None:
                    clean = False
                    log.error("%s (pid %d) exited with %s while stopping", child.name, pid, _describe(code))
                continue
            lived = now - child.started
            child.quick_deaths = child.quick_deaths + 1 if lived < workers.BACKOFF_RESET_AFTER_S else 1
            delay = workers.backoff_s(child.quick_deaths)
            child.due = now + delay
            log.error(
                "%s (pid %d) died unexpectedly (%s) after %.1f s; restarting it in %.1f s",
                child.name,
                pid,
                _describe(code),
                lived,
                delay,
            )
        if stopping:
            running = [c for c in children if c.pid and not c.due]
            if not running:
                return 0 if clean else 1
            if kill_at is None:
                kill_at = now + drain_budget_s
            elif now > kill_at:
                for child in running:
                    log.error("%s (pid %d) did not drain in time: killed", child.name, child.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
                kill_at = now + _KILL_GRACE_S
                clean = False
        else:
            for child in children:
                if child.due and now >= child.due:
                    _start(child)
        time.sleep(_POLL_S)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return f"exit status {code}"


def _start(child: _Child) -> None:
    child.pid = child.start()
    child.started = time.monotonic()
    child.due = 0.0
    log.info("%s started (pid %d)", child.name, child.pid)


def _worker_starter(plan_for: Callable[[], serving.Plan], sock: socket.socket, slot: WorkerSlot) -> Callable[[], int]:
    def start() -> int:
        return _fork(lambda: serving.run(dataclasses.replace(plan_for(), sock=sock, worker=slot, companions=[])))

    return start


def _fork_companions(companions: list[Companion]) -> int:
    """Start the companions in a process of their own; return once they are up (or it died)."""
    ready_r, ready_w = os.pipe()
    pid = _fork(lambda: _run_companions(companions, ready_w))
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        ready.read(1)  # b"" when the process died first: the supervisor reaps and restarts it
    return pid


def _run_companions(companions: list[Companion], ready_fd: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with contextlib.AsyncExitStack() as stack:
            for companion in companions:
                await stack.enter_async_context(companion())
            os.write(ready_fd, b"1")
            os.close(ready_fd)
            await stop.wait()

    loop = serving.new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def _fork(target: Callable[[], None]) -> int:
    """Run `target` in a child process; its pid. The child never returns into the caller."""
    sys.stdout.flush()
    sys.stderr.flush()
    supervisor = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    _child_main(target, supervisor)


def _term_when_orphaned(supervisor: int) -> None:
    """SIGTERM this process when the supervisor dies (even by SIGKILL): it drains and exits
    rather than serve on unsupervised. Linux's PR_SET_PDEATHSIG; elsewhere, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _child_main(target: Callable[[], None], supervisor: int) -> NoReturn:
    code = 1
    try:
        # Until the child's event loop installs its own handlers, a signal ends it plainly.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _term_when_orphaned(supervisor)
        target()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("process %d failed", os.getpid())
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        # Never the parent's cleanup (its private Redis, its temporary directory): _exit.
        os._exit(code)
