"""The deadline state machine and the guard, with the time passed in (the sockets: http/test_listener.py)."""

from __future__ import annotations

import pytest

from abrouter.router.connections import ConnectionClock, ConnectionGuard, Limits, Phase

LIMITS = Limits(header_s=10, body_idle_s=30, idle_s=15, max_connections=2)


def test_each_phase_has_its_deadline() -> None:
    c = ConnectionClock(LIMITS, since=0.0)  # accepted at 0: it owes us a request's headers
    assert c.expired(9.9) is None and c.expired(10.0) is Phase.HEADERS
    c.received(1.0)  # a drip does not move the header deadline
    c.received(9.0)
    assert c.expired(9.9) is None and c.expired(10.0) is Phase.HEADERS
    c.headers_complete(9.5)
    c.received(39.0)  # each body byte does
    assert c.expired(68.9) is None and c.expired(69.0) is Phase.BODY
    c.body_complete()
    assert c.phase is Phase.BUSY and c.expired(10_000.0) is None  # the upstream's timeouts apply
    c.response_done(100.0)
    assert c.phase is Phase.IDLE and c.expired(114.9) is None and c.expired(115.0) is Phase.IDLE
    c.received(110.0)  # the next request: its headers are due 10 s after its first byte
    assert c.phase is Phase.HEADERS and c.expired(119.9) is None and c.expired(120.0) is Phase.HEADERS


def test_no_body_deadline_while_the_server_does_not_read() -> None:
    c = ConnectionClock(LIMITS, since=0.0)
    c.received(0.0)
    c.headers_complete(0.0)
    c.pause()
    assert c.expired(1_000.0) is None
    c.resume(1_000.0)
    assert c.expired(1_029.9) is None and c.expired(1_030.0) is Phase.BODY


@pytest.mark.parametrize("phase", list(Phase))
def test_a_stream_opened_is_the_three_steps_of_a_request_whose_head_and_body_arrived(phase: Phase) -> None:
    one, three = ConnectionClock(LIMITS, since=0.0), ConnectionClock(LIMITS, since=0.0)
    for c in (one, three):
        c.phase, c.in_flight = phase, 1
    one.stream_opened(5.0)
    three.received(5.0)
    three.headers_complete(5.0)
    three.body_complete()
    assert (one.phase, one.since, one.in_flight) == (three.phase, three.since, three.in_flight) == (Phase.BUSY, 5.0, 2)


def test_a_pipelined_request_keeps_the_connection_busy_until_both_are_answered() -> None:
    c = ConnectionClock(LIMITS, since=0.0)
    for _ in range(2):
        c.received(0.0)
        c.headers_complete(0.0)
        c.body_complete()
    c.response_done(1.0)
    assert c.phase is Phase.BUSY
    c.response_done(2.0)
    assert c.phase is Phase.IDLE and c.since == 2.0


def test_the_guard_caps_counts_and_closes_only_the_late() -> None:
    g = ConnectionGuard(LIMITS)
    closed: list[str] = []
    assert g.admit() and g.admit() and not g.admit()
    assert g.refused == 1 and g.open == 2
    late, fresh = ConnectionClock(LIMITS, since=0.0), ConnectionClock(LIMITS, since=15.0)
    g.opened(late, lambda: closed.append("late"))
    g.opened(fresh, lambda: closed.append("fresh"))
    assert g.sweep(20.0) == 1 and closed == ["late"] and g.timeouts[Phase.HEADERS] == 1
    g.closed(late)
    assert g.open == 1 and g.admit()


@pytest.mark.parametrize("field", ["header_s", "body_idle_s", "idle_s"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Limits(**{field: 0})


def test_the_sweep_runs_four_times_per_shortest_deadline_at_most_once_a_second() -> None:
    assert Limits(header_s=0.3, body_idle_s=0.3, idle_s=0.3).sweep_interval_s == pytest.approx(0.075)
    assert Limits().sweep_interval_s == 1.0
    assert (Limits().header_s, Limits().body_idle_s, Limits().idle_s) == (10.0, 30.0, 75.0)
