"""The schedule of one analyzer over many experiments (pure: times are arguments)."""

from __future__ import annotations

import math

import pytest

from abrouter.analysis.schedule import Schedule, next_slot, phase


def test_phases_are_stable_and_spread_a_thousand_experiments_over_the_interval() -> None:
    keys = [f"ns/exp-{i}" for i in range(1000)]
    phases = [phase(k, 60.0) for k in keys]
    assert phases == [phase(k, 60.0) for k in keys]  # the same in every process, after every restart
    assert all(0 <= p < 60 for p in phases)
    per_tenth = [sum(1 for p in phases if 6 * i <= p < 6 * (i + 1)) for i in range(10)]
    assert min(per_tenth) >= 70 and max(per_tenth) <= 130, per_tenth  # ~100 each, not all at once
    assert len({round(p, 6) for p in phases}) == 1000


@pytest.mark.parametrize("after", [0.0, 17.3, 1_733_400_000.5, 59.999])
def test_the_next_slot_is_the_keys_phase_within_the_next_interval(after: float) -> None:
    slot = next_slot("ns/a", after, 60.0)
    assert after < slot <= after + 60
    assert math.isclose((slot - phase("ns/a", 60.0)) / 60 % 1, 0, abs_tol=1e-9) or math.isclose(
        (slot - phase("ns/a", 60.0)) / 60 % 1, 1, abs_tol=1e-9
    )
    assert next_slot("ns/a", slot, 60.0) == pytest.approx(slot + 60)


def test_sync_adds_at_the_phase_removes_and_reports_both() -> None:
    s = Schedule(every_s=10.0)
    assert s.sync(["a", "b"], now=100.0) == (["a", "b"], [])
    assert all(100 < e.due <= 110 for e in s.entries.values())
    assert s.sync(["b", "c"], now=105.0) == (["c"], ["a"])
    assert set(s.entries) == {"b", "c"}
    assert s.sync(["c", "b"], now=106.0) == ([], [])
    first = Schedule(every_s=10.0)
    first.sync(["a"], now=100.0, immediately=True)
    assert first.due(100.0) == ["a"]


def test_due_lists_the_longest_overdue_first_and_a_success_waits_one_interval() -> None:
    s = Schedule(every_s=10.0)
    s.sync(["a", "b", "c"], now=0.0)
    slots = {k: e.due for k, e in s.entries.items()}
    assert s.due(0.0) == []
    assert s.due(10.0) == sorted(slots, key=lambda k: (slots[k], k))
    due = s.done("a", now=12.0, ok=True)
    assert due == next_slot("a", 12.0, 10.0) and 12 < due <= 22
    assert s.looked == 1 and s.failed == 0


def test_failures_back_off_doubling_up_to_the_cap_without_touching_the_others() -> None:
    s = Schedule(every_s=10.0, max_backoff_s=45.0)
    s.sync(["bad", "good"], now=0.0)
    good_due = s.entries["good"].due
    waits = []
    now = 20.0
    for _ in range(5):
        due = s.done("bad", now=now, ok=False)
        assert due is not None
        waits.append(due - now)
        now = due
    # about 10, 20, 40, 45, 45 s (each at the key's phase, so within one interval after)
    for wait, expected in zip(waits, [10, 20, 40, 45, 45]):
        assert expected - 10 < wait <= expected + 1e-6, waits
    assert s.entries["bad"].failures == 5 and s.failed == 5
    assert s.entries["good"].due == good_due  # the others keep their slots
    s.done("bad", now=now, ok=True)
    assert s.entries["bad"].failures == 0 and s.entries["bad"].due <= now + 10


def test_a_skipped_slot_passes_unlooked_and_a_removed_key_is_not_rescheduled() -> None:
    s = Schedule(every_s=10.0)
    s.sync(["a"], now=0.0)
    slot = s.entries["a"].due
    s.skip("a", now=slot)
    assert s.entries["a"].due == pytest.approx(slot + 10) and s.looked == 0
    s.sync([], now=slot)
    assert s.done("a", now=slot, ok=True) is None and s.next_due() is None
