"""Leader election through a Lease: the pure rules, then the real client against our API test server.

The electors' clocks are arguments: the tests move time by hand, so no test sleeps out a
lease duration, and the HTTP (get, create, replace guarded by resourceVersion, 409) is real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abrouter.kube import election
from abrouter.kube.client import KubeClient
from abrouter.kube.election import ElectionSettings, LeaseRecord, Observed
from abrouter.kube.leader import LeaderElector
from tests.kube.apiserver import NAMESPACE, KubeApiServer

SETTINGS = ElectionSettings(lease="analyzer", lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)


def record(holder: str | None, renew: str = "t0", rv: str = "1") -> LeaseRecord:
    return LeaseRecord(holder=holder, resource_version=rv, renew_time=renew)


# ------------------------------------------------------------------------- the rules


def test_decide_creates_renews_waits_out_the_duration_on_its_own_clock_and_takes_a_free_lease() -> None:
    me = "b"
    assert election.decide(None, me=me, now=0, settings=SETTINGS) == "create"
    assert election.decide(Observed(record("b"), since=0), me=me, now=100, settings=SETTINGS) == "renew"
    held = Observed(record("a"), since=50)
    assert election.decide(held, me=me, now=64.9, settings=SETTINGS) == "standby"
    assert election.decide(held, me=me, now=65, settings=SETTINGS) == "acquire"
    assert election.decide(Observed(record(None), since=50), me=me, now=50, settings=SETTINGS) == "acquire"


def test_an_observation_restarts_only_when_the_holder_renews() -> None:
    first = Observed(record("a", renew="t1", rv="5"), since=10)
    assert first.seen(record("a", renew="t1", rv="9"), now=20) is first  # a label edit is not a renewal
    renewed = first.seen(record("a", renew="t2", rv="10"), now=20)
    assert renewed.since == 20


def test_the_holder_stops_acting_before_anyone_may_take_over() -> None:
    assert election.leading(100, now=109.9, settings=SETTINGS)
    assert not election.leading(100, now=110, settings=SETTINGS)
    assert not election.leading(None, now=0, settings=SETTINGS)
    assert SETTINGS.renew_deadline_s < SETTINGS.lease_duration_s
    with pytest.raises(ValueError, match="retry_period_s < renew_deadline_s < lease_duration_s"):
        ElectionSettings(lease_duration_s=5, renew_deadline_s=10)


# ----------------------------------------------------------- against the API test server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clients(kubeconfig: Path) -> Iterator[tuple[KubeClient, KubeClient]]:
    a = KubeClient.from_config(kubeconfig, role="analyzer")
    b = KubeClient.from_config(kubeconfig, role="analyzer")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def elector(client: KubeClient, name: str, clock: Clock) -> LeaderElector:
    return LeaderElector(client, NAMESPACE, identity=name, settings=SETTINGS, clock=clock)


def both_tried(clients: tuple[KubeClient, KubeClient]) -> tuple[Clock, LeaderElector, LeaderElector]:
    """Candidates "a" then "b" on one clock, each after its first try: "a" got the Lease."""
    clock = Clock()
    a, b = elector(clients[0], "a", clock), elector(clients[1], "b", clock)
    a.try_once()
    b.try_once()
    return clock, a, b


def lease(kube_api: KubeApiServer) -> dict[str, Any]:
    found = kube_api.get("leases", NAMESPACE, SETTINGS.lease)
    assert found is not None
    return found


def test_of_two_candidates_only_one_leads_and_keeps_it_while_it_renews(
    kube_api: KubeApiServer, clients: tuple[KubeClient, KubeClient]
) -> None:
    clock, a, b = both_tried(clients)
    assert a.leading() and not b.leading()
    spec = lease(kube_api)["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
    for _ in range(30):  # a minute of renewals every 2 s: b never takes over
        clock.now += SETTINGS.retry_period_s
        a.try_once()
        b.try_once()
        assert a.leading() and not b.leading()
    assert lease(kube_api)["spec"]["acquireTime"] == spec["acquireTime"]  # renewals keep it
    assert (a.terms, b.terms) == (1, 0)


def test_a_leader_that_stops_renewing_is_replaced_after_the_lease_duration_and_stands_down(
    kube_api: KubeApiServer, clients: tuple[KubeClient, KubeClient]
) -> None:
    clock, a, b = both_tried(clients)  # b sees a's Lease now
    clock.now += SETTINGS.renew_deadline_s  # a is cut off: it has not renewed for the renew deadline
    assert not a.leading()  # it stopped acting by itself...
    b.try_once()
    assert not b.leading()  # ...before b may take over
    clock.now += SETTINGS.lease_duration_s - SETTINGS.renew_deadline_s
    b.try_once()
    assert b.leading()
    spec = lease(kube_api)["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    a.try_once()  # a comes back: it reads b's Lease and stands by
    assert not a.leading() and b.leading()


def test_a_leader_whose_lease_is_taken_over_stops_at_its_next_read(
    kube_api: KubeApiServer, clients: tuple[KubeClient, KubeClient]
) -> None:
    clock = Clock()
    a = elector(clients[0], "a", clock)
    a.try_once()
    assert a.leading()
    taken = lease(kube_api)
    taken["spec"] |= {"holderIdentity": "intruder", "renewTime": "2026-12-05T00:00:00.000000Z"}
    kube_api.put("leases", NAMESPACE, taken)
    clock.now += SETTINGS.retry_period_s
    a.try_once()
    assert not a.leading()


def test_of_two_writes_from_one_read_the_second_is_a_conflict_and_does_not_lead(
    kube_api: KubeApiServer, clients: tuple[KubeClient, KubeClient]
) -> None:
    clock, _, b = both_tried(clients)
    clock.now += SETTINGS.lease_duration_s
    # Just before b's takeover is written, another candidate writes the Lease (a renewal).
    renewed = lease(kube_api)
    renewed["spec"]["renewTime"] = "2026-12-05T00:00:01.000000Z"
    kube_api.before_next_write(lambda: kube_api.put("leases", NAMESPACE, renewed))
    b.try_once()
    assert not b.leading()
    assert lease(kube_api)["spec"]["holderIdentity"] == "a"


def test_a_clean_stop_releases_the_lease_and_a_standby_takes_it_at_once(
    kube_api: KubeApiServer, clients: tuple[KubeClient, KubeClient]
) -> None:
    _, a, b = both_tried(clients)
    a.release()
    assert lease(kube_api)["spec"].get("holderIdentity") is None
    b.try_once()  # no lease duration to wait out
    assert b.leading() and lease(kube_api)["spec"]["holderIdentity"] == "b"


def test_without_the_verbs_on_leases_nobody_leads_and_the_error_names_them(
    kube_api: KubeApiServer, clients: tuple[KubeClient, KubeClient], caplog: pytest.LogCaptureFixture
) -> None:
    kube_api.allow("leases", "get")
    a = elector(clients[0], "a", Clock())
    a.try_once()
    assert not a.leading()
    assert "cannot create leases.coordination.k8s.io in namespace abrouter-test" in caplog.text
