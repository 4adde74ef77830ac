"""`CatalogSource`: every Experiment of a namespace (optionally by label selector), listed
then watched, for ``abrouter serve --experiments NAMESPACE`` (issue 16).

The same list/watch loop as `kube.KubeSource` (its thread, relist on 410, back-off, 401/403
as `Access`), over the whole namespace: each object version is offered once as a `Spec`
(an `Experiment`, or the `ConfigError` that makes it unusable, also recorded as an
``InvalidSpec`` Event), and a deletion as `Removed`. A relist also reports as `Removed`
every experiment that vanished while the watch was down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from abrouter.contract import resource
from abrouter.contract.experiment import ConfigError, Experiment
from abrouter.kube.client import KubeClient, Ref
from abrouter.router.sources.base import CatalogUpdate, Removed, Spec
from abrouter.router.sources.kube import KubeSource

log = logging.getLogger("abrouter.weights")


class CatalogSource(KubeSource):
    """Yields a `Spec` per changed Experiment and `Removed` per deleted one (see the module docstring)."""

    def __init__(self, client: KubeClient, namespace: str, *, selector: str = "", **options: Any) -> None:
        super().__init__(client, Ref(namespace, ""), **options)
        self.selector = selector
        self.name = f"Experiments in {namespace}" + (f" ({selector})" if selector else "")
        #: resource name -> the version last offered.
        self.versions: dict[str, str] = {}

    @classmethod
    def start(
        cls, client: KubeClient, namespace: str, *, selector: str = "", **options: Any
    ) -> tuple[list[Experiment], CatalogSource]:
        """The namespace's valid Experiments now (an API failure raises), and the source that follows
        them from there. An invalid one is logged and left out; the watch reports it again."""
        items, version = client.list_experiments(namespace, selector=selector)
        experiments = []
        for obj in items:
            try:
                experiments.append(resource.parse(obj).experiment)
            except ConfigError as exc:
                log.error("Experiment %s/%s: not served: %s", namespace, obj["metadata"]["name"], exc)
        source = cls(client, namespace, selector=selector, resource_version=version, **options)
        source.versions = {str(o["metadata"]["name"]): str(o["metadata"]["resourceVersion"]) for o in items}
        return experiments, source

    async def updates(self) -> AsyncIterator[CatalogUpdate]:  # type: ignore[override]
        async for update in super().updates():
            yield cast(CatalogUpdate, update)

    def _list(self, hand_over: Any) -> str:
        items, version = self.client.list_experiments(self.ref.namespace, selector=self.selector)
        present = {str(o.get("metadata", {}).get("name", "")) for o in items}
        for gone in sorted(set(self.versions) - present):
            del self.versions[gone]
            hand_over(Removed(gone))
        for obj in items:
            self._offer(obj, hand_over)
        return version

    def _watch(self, version: str, hand_over: Any, stop: Any) -> str:
        events = self.client.watch(self.ref.namespace, version, timeout_s=self.watch_timeout_s, selector=self.selector)
        for kind, obj in events:
            if stop.is_set():
                break
            meta = obj.get("metadata", {}) if isinstance(obj, dict) else {}
            version = str(meta.get("resourceVersion", version))
            name = str(meta.get("name", ""))
            if kind == "DELETED":
                if self.versions.pop(name, None) is not None:
                    hand_over(Removed(name))
            elif kind in ("ADDED", "MODIFIED"):
                self._offer(obj, hand_over)
        return version

    def _offer(self, obj: dict[str, Any], hand_over: Any) -> None:
        meta = obj.get("metadata", {})
        name, version = str(meta.get("name", "")), str(meta.get("resourceVersion", ""))
        if version and self.versions.get(name) == version:
            return
        self.versions[name] = version
        try:
            spec: Experiment | ConfigError = resource.parse(obj).experiment
        except ConfigError as exc:
            spec = exc
            self._record_invalid(obj, exc)
        hand_over(Spec(name, spec))
