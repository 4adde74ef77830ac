"""The object store of the Kubernetes API test server (`tests/kube/apiserver.py`).

resourceVersion, generation, preconditions, the change history a watch replays, and the
``kind: Status`` bodies of errors. Runs only on the server's event loop.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GROUP, VERSION, PLURAL = "abrouter.io", "v1alpha1", "experiments"
Key = tuple[str, str, str]  # (resource, namespace, name)


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = status_body(code, reason, message, details)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: null deletes, objects merge, anything else (lists included) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass
class Watcher:
    resource: str
    namespace: str
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    #: The watch's labelSelector: it sees an object leave the selection as DELETED and
    #: enter it as ADDED, as the API server's watch cache does.
    selector: str = ""

    def sees(self, kind: str, before: dict[str, str] | None, obj: dict[str, Any]) -> str | None:
        """The event type this watch sees for a change (`before`: the labels before it), or None."""
        now = selects(self.selector, labels_of(obj))
        was = before is not None and selects(self.selector, before)
        if kind == "MODIFIED" and was != now:
            return "ADDED" if now else "DELETED"
        return kind if now or (kind == "MODIFIED" and was) else None


class Store:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.rv = 100
        #: (resourceVersion, event type, key, labels before, object) of every change, oldest first.
        self.history: list[tuple[int, str, Key, dict[str, str] | None, dict[str, Any]]] = []
        #: A watch from a resourceVersion below this one is 410 Gone.
        self.oldest = self.rv
        self._watchers: list[Watcher] = []
        self._before_write: Callable[[], None] | None = None

    def _compact(self) -> None:
        self.history.clear()
        self.oldest = self.rv

    # ------------------------------------------------------------------------ the store

    def _commit(
        self, key: Key, old: dict[str, Any] | None, new: dict[str, Any], *, spec_changed: bool
    ) -> dict[str, Any]:
        """Store `new` (None-free) with a fresh resourceVersion, unless nothing changed."""
        if old is not None and new == old:
            return copy.deepcopy(old)
        self.rv += 1
        meta = new.setdefault("metadata", {})
        meta.update(name=key[2], namespace=key[1], resourceVersion=str(self.rv))
        if old is None:
            meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now_rfc3339())
        else:
            for k in ("uid", "creationTimestamp"):
                meta[k] = old["metadata"][k]
            meta["generation"] = old["metadata"]["generation"] + (1 if spec_changed else 0)
        before = None if old is None else labels_of(old)
        self.objects[key] = new
        self._publish("ADDED" if old is None else "MODIFIED", key, new, before)
        return copy.deepcopy(new)

    def _publish(self, kind: str, key: Key, obj: dict[str, Any], before: dict[str, str] | None = None) -> None:
        snapshot = copy.deepcopy(obj)
        self.history.append((self.rv, kind, key, before, snapshot))
        for w in self._watchers:
            if (w.resource, w.namespace) == key[:2] and (seen := w.sees(kind, before, snapshot)):
                w.queue.put_nowait({"type": seen, "object": snapshot})

    def _existing(self, key: Key) -> dict[str, Any]:
        obj = self.objects.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{qualified_kind(key[0])} "{key[2]}" not found', details_of(key))
        return obj

    def _precondition(self, key: Key, body: Any, current: dict[str, Any], *, required: bool = False) -> None:
        if self._before_write is not None:
            action, self._before_write = self._before_write, None
            action()
            current = self.objects[key]
        rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        if rv is None and required:
            raise ApiError(
                422, "Invalid", "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
            )
        if rv is not None and str(rv) != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {qualified_kind(key[0])} "{key[2]}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                details_of(key),
            )

    def _list_body(self, resource: str, ns: str, kind: str, api_version: str, *, selector: str = "") -> dict[str, Any]:
        items = [
            o
            for (r, n, _), o in sorted(self.objects.items())
            if (r, n) == (resource, ns) and selects(selector, labels_of(o))
        ]
        return {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": str(self.rv)}, "items": items}


_REQUIREMENT = re.compile(
    r"^\s*(?:(?P<absent>!)\s*(?P<a>[\w./-]+)|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$"
)


def selects(selector: str, labels: dict[str, str]) -> bool:
    """Whether `labels` match the label `selector` (equality- and set-based), as the API server reads it;
    a selector that does not parse is a 400."""
    for part in re.split(r",(?![^(]*\))", selector) if selector.strip() else []:
        m = _REQUIREMENT.match(part)
        if m is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        if m["absent"]:
            ok = m["a"] not in labels
        elif m["op"]:
            ok = (labels.get(m["key"]) == m["value"]) == (m["op"] != "!=")
        elif m["set"]:
            values = {v.strip() for v in m["values"].split(",")}
            ok = (labels.get(m["key"]) in values) == (m["set"] == "in")
        else:
            ok = m["key"] in labels
        if not ok:
            return False
    return True


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def name_of(body: dict[str, Any]) -> str:
    name = (body.get("metadata") or {}).get("name")
    if not name:
        raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
    return str(name)


def user_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """The metadata a client may change: labels and annotations."""
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in ("labels", "annotations") if meta.get(k)}  # an empty map is omitted


def qualified_kind(resource: str) -> str:
    qualified = {PLURAL: f"{PLURAL}.{GROUP}", "deployments": "deployments.apps", "leases": "leases.coordination.k8s.io"}
    return qualified.get(resource, resource)


def details_of(key: Key) -> dict[str, Any]:
    group = {PLURAL: GROUP, "deployments": "apps", "leases": "coordination.k8s.io"}.get(key[0], "")
    return {"name": key[2], "group": group, "kind": key[0]}


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
