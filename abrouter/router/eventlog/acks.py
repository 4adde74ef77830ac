"""What Redis acknowledged to this producer, so that a Redis that comes back without it is noticed. Pure.

Redis may lose batches it acknowledged: a crash inside the AOF fsync window, an AOF cut
short, an RDB snapshot restored, a restart without persistence. The producer re-sends
what it still retains (`abrouter.router.eventlog.delivery.RETAIN_S`); anything older is
gone. `Acknowledged` remembers, per acknowledged seq, how many events the batch held and
when it was acknowledged, so that when Redis reports a last seq below the highest it
acknowledged, the batches it lost and cannot get back (a `Hole`) are counted exactly.
Each seq is counted in at most one hole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

#: Acknowledged seqs remembered: at 4 batches a second, about 7 hours; a few MB at most.
WINDOW = 100_000


@dataclass(frozen=True, slots=True)
class Hole:
    """Acknowledged batches that Redis no longer has and that cannot be re-sent."""

    batches: int
    events: int
    #: Unix times of the first and the last lost batch's acknowledgement.
    since: float
    until: float


class Acknowledged:
    """Seqs Redis acknowledged to one producer; see the module docstring."""

    def __init__(self, window: int = WINDOW) -> None:
        self._batches: deque[tuple[int, int, float]] = deque(maxlen=window)  # (seq, events, at)
        #: The highest seq Redis acknowledged.
        self.highest = 0
        self._counted = 0  # seqs up to here are already in a hole (or were never lost)

    def add(self, seq: int, events: int, at: float) -> None:
        """Redis acknowledged batch `seq` of `events` events at unix time `at`."""
        self._batches.append((seq, events, at))
        self.highest = max(self.highest, seq)

    def hole(self, redis_last: int, resent: Collection[int]) -> Hole | None:
        """The batches lost when Redis' last applied seq is `redis_last`, but for those `resent`.

        None when Redis has everything acknowledged, or only lacks what is re-sent.
        """
        start = max(redis_last, self._counted)
        if self.highest <= start:
            return None
        lost = [(s, n, at) for s, n, at in self._batches if start < s <= self.highest and s not in resent]
        self._counted = self.highest
        if not lost:
            return None
        return Hole(
            batches=len(lost),
            events=sum(n for _, n, _ in lost),
            since=min(at for _, _, at in lost),
            until=max(at for _, _, at in lost),
        )
