"""One analyzer process for many experiments: each looked at on its own schedule, none stopping the others.

`Fleet` asks its `Roster` which experiments there are (a fixed list of files, or the
Experiments of a namespace, listed again every refresh), keeps each on its own
`schedule.Schedule` slot, and looks at the due ones one after the other:

- a look that fails (its `Target.look` returns a nonzero exit code, having printed its
  one-line error, or raises: a bug) is counted and logged, and that experiment backs off;
  the others keep their slots;
- a look that takes longer than `look_timeout_s` (a Redis that stopped answering: the
  analyzer's client has no timeouts of its own) is abandoned and counted as failed, so
  one hung call cannot stop the loop; its writes are each guarded (`kube_look`), and a
  decision it left unfinished is finished by the next look;
- a roster that cannot be read (the API down) keeps the last set of experiments;
- with a `Leadership` (`abrouter.kube.leader.LeaderElector`), no look starts while this
  process is not the leader (one under way when the Lease is lost finishes: its writes
  are guarded by resourceVersion); the slots pass by unlooked, so a new leader does not
  start with a burst of every overdue experiment;
- `stop` (SIGTERM) ends the loop between two looks: a look in progress finishes, so no
  decision is left half written by the stop itself.

Looks run one at a time: one look from Redis is about 5 ms of CPU, so one core looks at
1,000 experiments a minute with most of it to spare, and one at a time keeps the API and
Redis load of a pass flat (bench/README.md, "Analyzer: one pass over 1,000 experiments").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from abrouter.analysis.schedule import Schedule
from abrouter.errors import AbrouterError

log = logging.getLogger("abrouter.analyzer")


class Target(Protocol):
    """One experiment the fleet looks at."""

    #: How the schedule and the logs know it: the config file, or NAMESPACE/NAME.
    key: str

    async def look(self) -> int:
        """Look once; the exit code a single ``abrouter analyze`` would have (0 ok, 1 failed, 2 bad spec)."""
        ...


class Roster(Protocol):
    """Where the experiments come from."""

    async def targets(self) -> Mapping[str, Target]:
        """The experiments now, by key; raises `AbrouterError` when they cannot be listed."""
        ...


class Leadership(Protocol):
    def leading(self) -> bool: ...


@dataclass
class Fleet:
    roster: Roster
    schedule: Schedule
    #: None: always act (a single replica, or files).
    leader: Leadership | None = None
    #: How often the roster is listed again (default: the schedule's interval).
    refresh_s: float | None = None
    #: Seconds after which a look is abandoned and counted as failed.
    look_timeout_s: float = 120.0
    clock: Callable[[], float] = time.time
    targets: dict[str, Target] = field(default_factory=dict)

    async def once(self) -> int:
        """Look at every experiment once, in key order; the worst exit code (0 when there is none)."""
        self.targets = dict(await self.roster.targets())
        codes = [await self._look(self.targets[key]) for key in sorted(self.targets)]
        return max(codes, default=0)

    async def run(self, stop: asyncio.Event) -> None:
        """Look at each experiment at its slot until `stop` is set."""
        refresh_s = self.refresh_s or self.schedule.every_s
        refreshed = -float("inf")
        while not stop.is_set():
            now = self.clock()
            if now - refreshed >= refresh_s:
                await self._refresh(now)
                refreshed = now
            for key in self.schedule.due(self.clock()):
                if stop.is_set():
                    return
                if self.leader is not None and not self.leader.leading():
                    self.schedule.skip(key, now=self.clock())
                    continue
                target = self.targets.get(key)
                if target is not None:
                    self._done(key, await self._look(target))
            due = self.schedule.next_due()
            wake = refreshed + refresh_s if due is None else min(due, refreshed + refresh_s)
            await _sleep(stop, wake - self.clock())

    async def _refresh(self, now: float) -> None:
        try:
            found = dict(await self.roster.targets())
        except AbrouterError as exc:  # the API is down: keep looking at the last set
            log.warning("cannot list the experiments: %s; keeping the last %d", exc, len(self.targets))
            return
        added, removed = self.schedule.sync(sorted(found), now=now)
        self.targets = found
        if added:
            log.info("following %d new experiment(s): %s", len(added), _some(added))
        if removed:
            log.info("no longer looking at %d experiment(s): %s", len(removed), _some(removed))

    async def _look(self, target: Target) -> int:
        try:
            return await asyncio.wait_for(target.look(), self.look_timeout_s)
        except TimeoutError:
            log.error("%s: the look took longer than %g s; abandoned", target.key, self.look_timeout_s)
            return 1
        except Exception:  # a bug in one look must not stop the others
            log.exception("%s: the look failed unexpectedly", target.key)
            return 1

    def _done(self, key: str, code: int) -> None:
        due = self.schedule.done(key, now=self.clock(), ok=code == 0)
        if code == 0 or due is None:
            return
        failures = self.schedule.entries[key].failures
        log.warning(
            "%s: look failed (%d in a row, %d failed looks in all); next look in %.0f s",
            key,
            failures,
            self.schedule.failed,
            due - self.clock(),
        )


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def _some(keys: list[str], most: int = 5) -> str:
    head = ", ".join(keys[:most])
    return head if len(keys) <= most else f"{head} and {len(keys) - most} more"
