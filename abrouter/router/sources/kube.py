"""`KubeSource`: the experiment spec from an ``Experiment`` resource, listed then watched.

The official client is synchronous, so the list/watch loop runs in a thread of its own
and hands each new spec to the event loop with ``call_soon_threadsafe``; the loop never
waits on the API. The loop, as kopf's watcher does it:

1. list the namespace's Experiments: the object as it is now, and the list's
   resourceVersion;
2. watch from that resourceVersion; when a stream ends (the API's ``timeoutSeconds``),
   watch again from the last version seen, so no change between two streams is lost;
3. a 410 Gone (the API compacted its history past our version, reported as an ERROR
   event inside the stream) means the changes in between are gone for good: relist (1),
   and carry on from the fresh state;
4. the API unreachable (or any other error): back off, doubling up to `max_backoff_s`,
   then relist. The router keeps serving the last good spec all along, and stays ready:
   predictions must not stop because the control plane is down.
5. a 401 or 403 (the token or the Role no longer lets the router list or watch) is not
   the control plane being down: nobody can change this router's weights any more, and
   waiting does not fix it. It is handed on as `Access` (the router reports not ready,
   with the error as ``reload_error``, and ``abrouter_spec_source_up`` 0) while the
   loop keeps retrying as in 4; the first list that succeeds hands on `Access(None)`.

Each object version is offered once (by resourceVersion). An invalid spec is yielded as
its `ConfigError`, which `sources.base.follow` logs in one line while the last good spec
stays; this source also records it as a Kubernetes Event (reason ``InvalidSpec``) on the
Experiment, so ``kubectl describe`` shows why the change did not take. A deleted
Experiment is logged and the last spec stays: deleting the object is not a reason to
stop routing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from abrouter.contract import resource
from abrouter.contract.experiment import ConfigError, Experiment
from abrouter.kube import errors
from abrouter.kube.client import KubeClient, Ref
from abrouter.router.sources.base import Access

log = logging.getLogger("abrouter.weights")

Update = Experiment | ConfigError | Access


class KubeSource:
    """Yields the Experiment's spec on every change (see `sources.base.SpecSource`)."""

    def __init__(
        self,
        client: KubeClient,
        ref: Ref,
        *,
        resource_version: str = "",
        watch_timeout_s: int = 60,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.client = client
        self.ref = ref
        self.name = f"Experiment {ref}"
        self.watch_timeout_s = watch_timeout_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        #: The object version last offered (the initial `get`'s, from the caller).
        self.seen = resource_version
        #: How many times the watch relisted after a 410, and backed off after a failure.
        self.relists = 0
        self.failures = 0
        self._failing = False
        #: The 401/403 last handed on as `Access`, until a list succeeds again.
        self._denied: str | None = None

    async def updates(self) -> AsyncIterator[Update]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Update] = asyncio.Queue()
        stop = threading.Event()

        def hand_over(update: Update) -> None:  # called in the watch thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, update)
            except RuntimeError:  # the loop is closed: the router is shutting down
                stop.set()

        thread = threading.Thread(target=self._run, args=(hand_over, stop), name=f"watch {self.ref}", daemon=True)
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
            self.client.stop_watch()  # unblocks the thread's read; it exits on its own

    # ------------------------------------------------------------------ in the thread

    def _run(self, hand_over: Any, stop: threading.Event) -> None:
        delay = self.min_backoff_s
        while not stop.is_set():
            try:
                version = self._list(hand_over)
                if self._denied is not None:
                    self._denied = None
                    hand_over(Access(None))
                delay = self.min_backoff_s
                if self._failing:
                    self._failing = False
                    log.info("%s: the Kubernetes API is reachable again; following the resource", self.name)
                while not stop.is_set():
                    version = self._watch(version, hand_over, stop)
            except errors.KubeGone as exc:
                self.relists += 1
                log.info("%s: %s; relisting", self.name, exc)
            except errors.KubeError as exc:
                if stop.is_set():
                    return
                self.failures += 1
                self._failing = True
                if isinstance(exc, errors.KubeForbidden | errors.KubeUnauthorized) and str(exc) != self._denied:
                    self._denied = str(exc)
                    hand_over(Access(self._denied))
                log.warning("%s: %s; keeping the current spec, retrying in %.1fs", self.name, exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)
            except Exception:  # a bug: log it whole, and keep following rather than freeze the weights
                log.exception("%s: unexpected error in the watch; retrying in %.1fs", self.name, delay)
                stop.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)

    def _list(self, hand_over: Any) -> str:
        items, version = self.client.list_experiments(self.ref.namespace)
        obj = next((o for o in items if o.get("metadata", {}).get("name") == self.ref.name), None)
        if obj is None:
            log.warning("%s: not found; keeping the current spec", self.name)
        else:
            self._offer(obj, hand_over)
        return version

    def _watch(self, version: str, hand_over: Any, stop: threading.Event) -> str:
        """One watch stream; returns the last resourceVersion seen, to resume from."""
        for kind, obj in self.client.watch(self.ref.namespace, version, timeout_s=self.watch_timeout_s):
            if stop.is_set():
                break
            meta = obj.get("metadata", {}) if isinstance(obj, dict) else {}
            version = str(meta.get("resourceVersion", version))
            if meta.get("name") != self.ref.name:
                continue
            if kind == "DELETED":
                log.warning("%s: deleted; keeping the current spec until it is recreated", self.name)
            elif kind in ("ADDED", "MODIFIED"):
                self._offer(obj, hand_over)
        return version

    def _offer(self, obj: dict[str, Any], hand_over: Any) -> None:
        version = str(obj.get("metadata", {}).get("resourceVersion", ""))
        if version and version == self.seen:
            return
        self.seen = version
        try:
            update: Update = resource.parse(obj).experiment
        except ConfigError as exc:
            update = exc
            self._record_invalid(obj, exc)
        hand_over(update)

    def _record_invalid(self, obj: dict[str, Any], exc: ConfigError) -> None:
        message = f"spec rejected, the router keeps the last good one: {exc}"
        try:
            self.client.create_event(obj, reason="InvalidSpec", message=message, warning=True)
        except errors.KubeError as event_error:  # the rejection is still logged by `follow`
            log.warning("%s: cannot record the InvalidSpec Event: %s", self.name, event_error)
