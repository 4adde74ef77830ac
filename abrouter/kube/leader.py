"""`LeaderElector`: the I/O of leader election through a Lease; the rules are `abrouter.kube.election`.

Every `ElectionSettings.retry_period_s` it reads the Lease and does what `election.decide`
says: create it, take it over, renew it (a write guarded by the ``resourceVersion`` it
read), or stand by. `leading` is what the controller asks before each action: True only
while the last successful write is younger than the renew deadline, so a leader cut off
from the API stops acting by itself before anyone may take over. Reading a Lease held by
someone else, or losing a write to a 409, stops it at once. On a clean stop the leader
releases the Lease (no holder) so that a standby takes over at its next try.

The Kubernetes client is synchronous: each try runs in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from abrouter.kube import election, errors
from abrouter.kube.client import KubeClient
from abrouter.kube.election import ElectionSettings, LeaseRecord, Observed

log = logging.getLogger("abrouter.leader")


class LeaderElector:
    """One candidate (`identity`) for the Lease `settings.lease` in `namespace`."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        identity: str,
        settings: ElectionSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.identity = identity
        self.settings = settings or ElectionSettings()
        self.clock = clock
        #: How many times this candidate became the leader.
        self.terms = 0
        self._observed: Observed | None = None
        #: The clock when the last successful write started (None: not the holder).
        self._renewed: float | None = None
        self._error: str | None = None

    def leading(self) -> bool:
        return election.leading(self._renewed, now=self.clock(), settings=self.settings)

    async def run(self, stop: asyncio.Event) -> None:
        """Try every retry period until `stop` is set; then release the Lease if this candidate holds it."""
        try:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.try_once)
                except Exception:  # a bug: log it whole; the deadline stops the acting meanwhile
                    log.exception("leader election: unexpected error; trying again")
                try:
                    await asyncio.wait_for(stop.wait(), self.settings.retry_period_s)
                except TimeoutError:
                    pass
        finally:
            was_leading = self._renewed is not None
            self._renewed = None  # stop acting before the release is written
            if was_leading:
                await asyncio.to_thread(self.release)

    def try_once(self) -> None:
        """One read and, if `decide` says so, one write; API failures are logged once per kind, never raised."""
        started = self.clock()
        try:
            self._step(started)
        except errors.KubeConflict as exc:  # another candidate wrote first (or created it first)
            self._lose(f"lost a race for the Lease: {exc}")
        except errors.KubeError as exc:
            self._complain(f"cannot read or write Lease {self.namespace}/{self.settings.lease}: {exc}")
            return
        self._error = None

    def _step(self, started: float) -> None:
        doc = self.client.get_lease(self.namespace, self.settings.lease)
        now = self.clock()
        if doc is None:
            self._observed = None
        else:
            record = record_of(doc)
            seen = self._observed
            self._observed = Observed(record, now) if seen is None else seen.seen(record, now=now)
        action = election.decide(self._observed, me=self.identity, now=now, settings=self.settings)
        if action == "standby":
            self._lose(f"the Lease is held by {self._observed.record.holder if self._observed else '?'}")
            return
        if action == "create":
            self.client.create_lease(self.namespace, self._body(None))
        else:
            assert self._observed is not None
            self.client.replace_lease(self.namespace, self._body(self._observed.record, take=action == "acquire"))
        if self._renewed is None:
            self.terms += 1
            log.info("%s is now the leader (Lease %s/%s)", self.identity, self.namespace, self.settings.lease)
        self._renewed = started

    def release(self) -> None:
        """Give the Lease up (no holder), if it is still ours; failures only logged."""
        try:
            doc = self.client.get_lease(self.namespace, self.settings.lease)
            if doc is None or record_of(doc).holder != self.identity:
                return
            body = self._body(record_of(doc), holder=None)
            self.client.replace_lease(self.namespace, body)
            log.info("%s released the Lease %s/%s", self.identity, self.namespace, self.settings.lease)
        except errors.KubeError as exc:
            log.warning("cannot release Lease %s/%s: %s", self.namespace, self.settings.lease, exc)

    def _lose(self, why: str) -> None:
        if self._renewed is not None:
            log.warning("%s is no longer the leader: %s", self.identity, why)
        self._renewed = None

    def _complain(self, message: str) -> None:
        if message != self._error:
            log.warning("%s", message)
        self._error = message

    def _body(self, current: LeaseRecord | None, *, take: bool = False, holder: str | None = "") -> dict[str, Any]:
        holder = self.identity if holder == "" else holder
        stamp = micro_time(time.time())
        transitions = 0 if current is None else current.transitions + (1 if take else 0)
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration_s)) if holder else 1,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        }
        acquired = stamp if current is None or take else current.acquire_time
        if acquired is not None:
            spec["acquireTime"] = acquired
        metadata: dict[str, Any] = {"name": self.settings.lease, "namespace": self.namespace}
        if current is not None:
            metadata["resourceVersion"] = current.resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def record_of(doc: dict[str, Any]) -> LeaseRecord:
    spec = doc.get("spec") or {}
    return LeaseRecord(
        holder=spec.get("holderIdentity") or None,
        resource_version=str((doc.get("metadata") or {}).get("resourceVersion", "")),
        transitions=int(spec.get("leaseTransitions") or 0),
        renew_time=str(spec["renewTime"]) if spec.get("renewTime") else None,
        acquire_time=str(spec["acquireTime"]) if spec.get("acquireTime") else None,
    )


def micro_time(at: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    whole = int(at)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((at - whole) * 1e6):06d}Z"
