"""The CRD's OpenAPI v3 schema as a JSON-schema validator, for checking Experiment objects offline.

Kubernetes' dialect is OpenAPI 3.0 (JSON-schema draft 4 plus a few keywords): ``nullable``
and ``x-kubernetes-int-or-string`` are translated into draft-4 terms here; the other
``x-kubernetes-*`` keys change no validation and are ignored by jsonschema.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from abrouter.contract import crd


def to_draft4(node: Any) -> Any:
    if isinstance(node, list):
        return [to_draft4(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_draft4(v) for k, v in node.items() if k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        string = {"type": "string", **({"pattern": out.pop("pattern")} if "pattern" in out else {})}
        out["anyOf"] = [{"type": "integer"}, string]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def validator(document: dict[str, Any] | None = None) -> jsonschema.Draft4Validator:
    doc = document if document is not None else crd.crd()
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(to_draft4(schema))


def errors(obj: dict[str, Any], document: dict[str, Any] | None = None) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(document).iter_errors(obj)]
