"""`Acknowledged`: which acknowledged batches a Redis that went back in time lost for good. Pure."""

from __future__ import annotations

from abrouter.router.eventlog.acks import Acknowledged, Hole


def test_a_hole_counts_what_redis_lacks_less_what_is_resent_and_each_seq_once() -> None:
    acks = Acknowledged()
    for seq in range(1, 11):
        acks.add(seq, 10 * seq, at=100.0 + seq)
    assert acks.hole(10, resent=()) is None  # Redis has everything
    # Redis came back at seq 5; 9 and 10 are still retained and will be re-sent.
    assert acks.hole(5, resent={9, 10}) == Hole(batches=3, events=60 + 70 + 80, since=106.0, until=108.0)
    assert acks.hole(5, resent=()) is None  # asked again before the next batch: not counted twice
    acks.add(11, 5, at=111.0)
    assert acks.hole(10, resent=()) == Hole(batches=1, events=5, since=111.0, until=111.0)


def test_only_what_was_resent_is_no_hole() -> None:
    acks = Acknowledged()
    acks.add(1, 3, at=1.0)
    assert acks.hole(0, resent={1}) is None
