"""When each experiment is looked at next, for one analyzer looking at many (pure: times are arguments).

- Every experiment is looked at every `every_s` seconds, at its own **phase**: a fraction
  of the interval taken from a hash of its key (`phase`), counted from the Unix epoch.
  The phases are the same in every process and after a restart, so 1,000 experiments
  spread evenly over the interval instead of firing at once, and a new leader keeps the
  rhythm of the one it replaces.
- A look that ends after its next slot skips the slots it missed: a slow pass never turns
  into a burst of catch-up looks.
- A failed look backs off: the *n*-th failure in a row waits about ``every_s *
  2**(n - 1)`` (at its phase), at most `max_backoff_s`; a success returns to every slot.
  The other experiments keep their own slots whatever one of them does.
- `sync` follows the set of experiments: a new one is due at its next slot, a removed
  one is forgotten (with its failures).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field


def phase(key: str, every_s: float) -> float:
    """Seconds into each interval at which `key` is looked at: a stable hash, uniform over [0, every_s)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * every_s


def next_slot(key: str, after: float, every_s: float) -> float:
    """The first time strictly after `after` that is `key`'s phase within an interval."""
    offset = phase(key, every_s)
    n = math.floor((after - offset) / every_s) + 1
    return offset + n * every_s


@dataclass
class Entry:
    """One experiment's place in the schedule."""

    due: float
    #: Failed looks in a row (0 after a success).
    failures: int = 0


@dataclass
class Schedule:
    """The next look of every experiment, by key (a file path, or NAMESPACE/NAME)."""

    every_s: float
    #: The longest wait after failures in a row (at least `every_s`).
    max_backoff_s: float = 900.0
    entries: dict[str, Entry] = field(default_factory=dict)
    #: Failed looks since the start, over all experiments (what the log counts).
    failed: int = 0
    #: Looks done since the start, over all experiments.
    looked: int = 0

    def sync(self, keys: list[str], *, now: float, immediately: bool = False) -> tuple[list[str], list[str]]:
        """Follow the set of experiments; returns (added, removed), each sorted.

        A new key is due at its next slot, or at once with `immediately` (a first pass).
        """
        wanted = set(keys)
        added = sorted(wanted - self.entries.keys())
        removed = sorted(self.entries.keys() - wanted)
        for key in removed:
            del self.entries[key]
        for key in added:
            self.entries[key] = Entry(due=now if immediately else next_slot(key, now, self.every_s))
        return added, removed

    def due(self, now: float) -> list[str]:
        """The keys whose look is due at `now`, the longest overdue first (ties by key)."""
        return [k for k, e in sorted(self.entries.items(), key=lambda kv: (kv[1].due, kv[0])) if e.due <= now]

    def next_due(self) -> float | None:
        """When the next look is due (None: no experiment)."""
        return min((e.due for e in self.entries.values()), default=None)

    def done(self, key: str, *, now: float, ok: bool) -> float | None:
        """Record the end of `key`'s look at `now`; returns when it is due next (None: no longer scheduled)."""
        entry = self.entries.get(key)
        if entry is None:  # removed while it was being looked at
            return None
        self.looked += 1
        if ok:
            entry.failures = 0
            entry.due = next_slot(key, now, self.every_s)
        else:
            self.failed += 1
            entry.failures += 1
            entry.due = next_slot(key, now + self.backoff(entry.failures) - self.every_s, self.every_s)
        return entry.due

    def skip(self, key: str, *, now: float) -> None:
        """Let `key`'s slot pass unlooked (this process is not the leader): due at its next slot."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.due = next_slot(key, now, self.every_s)

    def backoff(self, failures: int) -> float:
        """About how long to wait after `failures` failed looks in a row."""
        wait = self.every_s * 2.0 ** min(failures - 1, 30)
        return max(self.every_s, min(wait, self.max_backoff_s))
