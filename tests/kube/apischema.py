"""What a real API server does with a custom resource's body before it stores it: prune, then validate.

For a CRD with a structural schema (ours, `k8s/base/crd.yaml`, as a cluster gets it):

1. **prune**: fields the schema does not name are dropped silently (``properties``
   without ``x-kubernetes-preserve-unknown-fields``; ``additionalProperties`` prunes
   inside each value); a ``null`` for a field that is not ``nullable`` is dropped too
   (apiextensions' ``PruneNonNullableNullsWithoutDefaults``). ``metadata`` is the API
   server's own and is not pruned here.
2. **validate** against the openAPIV3Schema (OpenAPI 3.0: JSON-schema draft 4 plus
   ``nullable`` and ``x-kubernetes-int-or-string``, translated by
   `tests.contract.crdschema`): a JSON number with a zero fraction counts as an integer
   (kube-openapi accepts ``30.0`` for ``type: integer``), ``0.25`` does not;
   ``format: date-time`` is checked. Every violation is a ``causes`` entry naming its
   field (``spec.variants[0].weight``) in one 422 ``Invalid`` Status, with the message
   the API server writes: ``Experiment.abrouter.io "x" is invalid: spec.slow_request:
   Invalid value: "number": spec.slow_request in body must be of type integer,string: "number"``.

Both run on create and on every write of the main resource and of ``/status`` (whose
object is validated whole, as the API server does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import validators

from tests.contract import crdschema

CRD = Path(__file__).resolve().parents[2] / "k8s" / "base" / "crd.yaml"
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
Cause = dict[str, str]


@cache
def schema() -> dict[str, Any]:
    doc = yaml.safe_load(CRD.read_text())
    return dict(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def prune(obj: Any, node: dict[str, Any], dropped: list[str] | None = None, *, at: str = "") -> Any:
    """`obj` without the fields `node` does not name, and without nulls it does not allow.

    The path of each field dropped is appended to `dropped` (the API server only warns).
    """
    dropped = [] if dropped is None else dropped
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return obj
    if isinstance(obj, dict):
        properties = node.get("properties")
        extra = node.get("additionalProperties")
        out = {}
        for key, value in obj.items():
            path = f"{at}.{key}" if at else str(key)
            child = (properties or {}).get(key) if properties is not None else extra
            if not at and key == "metadata":
                out[key] = value
            elif isinstance(child, dict) and not (value is None and not child.get("nullable")):
                out[key] = prune(value, child, dropped, at=path)
            else:
                dropped.append(path)
        return out
    if isinstance(obj, list) and isinstance(node.get("items"), dict):
        return [prune(x, node["items"], dropped, at=f"{at}[{i}]") for i, x in enumerate(obj)]
    return obj


def _is_integer(_: Any, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPES = jsonschema.Draft4Validator.TYPE_CHECKER.redefine("integer", _is_integer)
_Validator = validators.extend(jsonschema.Draft4Validator, type_checker=_TYPES)
_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(lambda value: not isinstance(value, str) or bool(_RFC3339.match(value)))


@cache
def _validator() -> Any:
    return _Validator(crdschema.to_draft4(schema()), format_checker=_FORMATS)


def causes(obj: dict[str, Any]) -> list[Cause]:
    """Every violation of the schema in `obj`, as the API server lists them in ``details.causes``."""
    found = sorted(_validator().iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [_cause(e) for e in found] + list(_duplicate_keys(obj, schema(), ""))


def _duplicate_keys(obj: Any, node: dict[str, Any], at: str) -> Iterable[Cause]:
    """``x-kubernetes-list-type: map``: two items with the same keys (``conditions`` by ``type``) are invalid."""
    if isinstance(obj, dict):
        for key, child in (node.get("properties") or {}).items():
            if key in obj:
                yield from _duplicate_keys(obj[key], child, f"{at}.{key}" if at else key)
        return
    if not isinstance(obj, list):
        return
    items = node.get("items") if isinstance(node.get("items"), dict) else {}
    names = node.get("x-kubernetes-list-map-keys") or []
    seen: set[tuple[Any, ...]] = set()
    for i, item in enumerate(obj):
        if node.get("x-kubernetes-list-type") == "map" and isinstance(item, dict):
            key = tuple(item.get(n) for n in names)
            if key in seen:
                shown = ", ".join(f'"{n}":"{v}"' for n, v in zip(names, key))
                yield {
                    "reason": "FieldValueDuplicate",
                    "field": f"{at}[{i}]",
                    "message": f"Duplicate value: {{{shown}}}",
                }
            seen.add(key)
        yield from _duplicate_keys(item, items or {}, f"{at}[{i}]")


def message(kind: str, name: str, found: Iterable[Cause]) -> str:
    parts = [f"{c['field']}: {c['message']}" for c in found]
    body = parts[0] if len(parts) == 1 else f"[{', '.join(parts)}]"
    return f'{kind} "{name}" is invalid: {body}'


def _field(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _cause(error: jsonschema.ValidationError) -> Cause:
    field = _field(error.absolute_path)
    value, kind = error.instance, str(error.validator)
    if kind == "required":
        missing = re.match(r"'([^']+)'", error.message)
        child = missing.group(1) if missing else "?"
        return {
            "reason": "FieldValueRequired",
            "field": f"{field}.{child}" if field else child,
            "message": "Required value",
        }
    if kind == "anyOf" and _int_or_string(error) and isinstance(value, str):
        pattern = next((o.get("pattern") for o in error.validator_value if o.get("type") == "string"), "")
        text = f"Invalid value: \"{value}\": {field} in body should match '{pattern}'"
        return {"reason": "FieldValueInvalid", "field": field, "message": text}
    if kind in ("type", "anyOf") and (kind == "type" or _int_or_string(error)):
        expected = error.validator_value if kind == "type" else "integer,string"
        expected = ",".join(expected) if isinstance(expected, list) else expected
        actual = _json_type(value)
        text = f'Invalid value: "{actual}": {field} in body must be of type {expected}: "{actual}"'
        return {"reason": "FieldValueTypeInvalid", "field": field, "message": text}
    if kind == "enum":
        allowed = ", ".join(f'"{v}"' for v in error.validator_value)
        text = f'Unsupported value: "{value}": supported values: {allowed}'
        return {"reason": "FieldValueNotSupported", "field": field, "message": text}
    if kind in ("minimum", "maximum"):
        exclusive = error.schema.get("exclusiveMinimum" if kind == "minimum" else "exclusiveMaximum")
        bound = ("greater than" if kind == "minimum" else "less than") + ("" if exclusive else " or equal to")
        text = f"Invalid value: {value}: {field} in body should be {bound} {error.validator_value}"
        return {"reason": "FieldValueInvalid", "field": field, "message": text}
    if kind == "pattern":
        text = f"Invalid value: \"{value}\": {field} in body should match '{error.validator_value}'"
        return {"reason": "FieldValueInvalid", "field": field, "message": text}
    return {"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {value!r}: {error.message}"}


def _int_or_string(error: jsonschema.ValidationError) -> bool:
    options = error.validator_value if isinstance(error.validator_value, list) else []
    return {o.get("type") for o in options if isinstance(o, dict)} == {"integer", "string"}
