"""Discovery and server-side tables for the API test server, so that the real `kubectl` can talk to it.

``kubectl get experiments`` first discovers the resources (``/api``, ``/apis``, each
group version's resource list), then lists with ``Accept: application/json;as=Table;...``
and prints the ``meta.k8s.io/v1`` Table the API server renders from the CRD's
``additionalPrinterColumns``: a Name column, then one cell per column from its JSONPath
(nothing where the path finds nothing; a date as an age like ``5s``; an object as its
JSON). kubectl hides ``priority`` > 0 columns unless ``-o wide``.
"""

from __future__ import annotations

import calendar
import json
import time
from functools import cache
from typing import Any

import yaml

from tests.kube import apischema
from tests.kube.apistore import GROUP, PLURAL, VERSION

_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def api_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}


def core_resources() -> dict[str, Any]:
    events = {"name": "events", "singularName": "event", "namespaced": True, "kind": "Event", "verbs": _VERBS}
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [events]}


def groups() -> dict[str, Any]:
    def group(name: str, version: str) -> dict[str, Any]:
        gv = {"groupVersion": f"{name}/{version}", "version": version}
        return {"name": name, "versions": [gv], "preferredVersion": gv}

    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group(GROUP, VERSION), group("apps", "v1")]}


def group_resources(group: str, version: str) -> dict[str, Any] | None:
    names = _crd()["spec"]["names"]
    resources = {
        (GROUP, VERSION): [
            {
                "name": PLURAL,
                "singularName": names["singular"],
                "namespaced": True,
                "kind": names["kind"],
                "verbs": _VERBS,
                "shortNames": names.get("shortNames", []),
                "categories": names.get("categories", []),
            },
            {
                "name": f"{PLURAL}/status",
                "singularName": "",
                "namespaced": True,
                "kind": names["kind"],
                "verbs": _VERBS,
            },
        ],
        ("apps", "v1"): [
            {
                "name": "deployments",
                "singularName": "deployment",
                "namespaced": True,
                "kind": "Deployment",
                "verbs": _VERBS,
            },
            {
                "name": "deployments/scale",
                "singularName": "",
                "namespaced": True,
                "kind": "Scale",
                "verbs": ["get", "patch"],
            },
        ],
    }.get((group, version))
    if resources is None:
        return None
    gv = f"{group}/{version}"
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def table(objects: list[dict[str, Any]], *, resource_version: str, now: float | None = None) -> dict[str, Any]:
    """The ``meta.k8s.io/v1`` Table of `objects`, columns from the CRD's printer columns."""
    now = time.time() if now is None else now
    columns = _crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
    definitions += [
        {"name": c["name"], "type": c["type"], "format": "", "description": "", "priority": c.get("priority", 0)}
        for c in columns
    ]
    rows = [
        {
            "cells": [o["metadata"]["name"], *(_cell(o, c, now) for c in columns)],
            "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]},
        }
        for o in objects
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }


@cache
def _crd() -> dict[str, Any]:
    return dict(yaml.safe_load(apischema.CRD.read_text()))


def _cell(obj: dict[str, Any], column: dict[str, Any], now: float) -> Any:
    value: Any = obj
    for part in column["jsonPath"].strip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return None
    if column["type"] == "date" and isinstance(value, str):
        return _age(now - calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    if column["type"] == "string" and not isinstance(value, str):
        return json.dumps(_go_numbers(value), separators=(",", ":"), sort_keys=True)
    return value


def _go_numbers(value: Any) -> Any:
    """Whole floats as integers, as Go's JSON encoder writes them (95, not 95.0)."""
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= 2 * size:
            return f"{s // size}{unit}"
    return f"{s}s"
