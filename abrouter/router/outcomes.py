"""Validation of reported outcomes (``POST /abrouter/outcomes``). Pure.

Batch semantics: all or nothing. If any item is invalid the whole batch is rejected
with 422 and a list of every bad item (its index, field and reason), and nothing is
recorded; a 202 means every item was recorded. A client can therefore always retry a
rejected batch after removing the items named, and never double-counts by retrying.

An item may carry an ``event_id``, the client's idempotency key (e.g. a UUID made when
the event happened): an outcome whose event_id was already recorded within
`abrouter.contract.keys.OUTCOME_ID_WINDOW_S` counts once. That makes it safe to resend a batch whose
202 was lost.

[cuped] An item ``{"unit": "u1", "covariate": 3.0}`` (or with ``request_id``) reports the
unit's pre-exposure covariate, for an experiment that declares one (``covariate: NAME``):
no metric, value or event_id. It is set once per unit: the first value recorded stays and
a later one is ignored (the router cannot tell a retry from a correction), so it is safe
to resend. With several covariates (``covariates: [a, b]``), ``{"unit": "u1", "covariates":
{"a": 3.0, "b": 1.0}}`` reports any of them at once, each set once by its earliest report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from abrouter.contract.experiment import Experiment
from abrouter.contract.keys import MAX_ABS_VALUE
from abrouter.router.errors import BatchError

MAX_BATCH = 1000
MAX_ID_LENGTH = 512
#: ``experiment`` names the experiment of a unit's outcome when the router serves several.
_ALLOWED = {"request_id", "unit", "metric", "value", "event_id", "covariate", "covariates", "experiment"}


@dataclass(frozen=True, slots=True)
class OutcomeItem:
    """A syntactically valid item; who gets credited is resolved afterwards."""

    index: int
    metric: str
    value: float
    request_id: str | None
    unit: str | None
    event_id: str | None = None
    #: [cuped] Further (covariate, value) pairs the same item reports (``covariates``).
    more: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ItemError:
    index: int
    field: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "error": self.error}


def items_of(body: Any) -> list[Any]:
    if isinstance(body, Mapping):
        return [body]
    if isinstance(body, list):
        if not body:
            raise BatchError("empty array: send one outcome object or an array of 1 to 1000")
        if len(body) > MAX_BATCH:
            raise BatchError(f"too many outcomes in one request: {len(body)} > {MAX_BATCH}")
        return body
    raise BatchError("body must be a JSON object or an array of objects")


def validate_item(index: int, raw: Any, experiment: Experiment) -> OutcomeItem | ItemError:
    if not isinstance(raw, Mapping):
        return ItemError(index, "", "must be a JSON object")
    unknown = sorted(set(raw) - _ALLOWED)
    if unknown:
        return ItemError(index, unknown[0], f"unknown field; allowed: {', '.join(sorted(_ALLOWED))}")
    who = _who(index, raw)
    if isinstance(who, ItemError):
        return who
    if "covariate" in raw or "covariates" in raw:  # [cuped]
        return _covariate(index, raw, experiment, who)
    metric = raw.get("metric")
    try:
        kind = experiment.metric(metric).kind if isinstance(metric, str) else None
    except KeyError:
        kind = None
    if kind is None or not isinstance(metric, str):
        known = ", ".join(m.name for m in experiment.outcome_metrics) or "(none configured)"
        return ItemError(index, "metric", f"unknown metric {metric!r}; known: {known}")
    if kind == "ratio":
        ratio = experiment.metric(metric)
        return ItemError(
            index,
            "metric",
            f"{metric!r} is a ratio of {ratio.numerator} and {ratio.denominator}: report those metrics instead",
        )
    value = _value(index, raw.get("value"), kind)
    if isinstance(value, ItemError):
        return value
    event_id = raw.get("event_id")
    if event_id is not None and not _short_string(event_id):
        return ItemError(index, "event_id", f"must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    return OutcomeItem(index=index, metric=metric, value=value, request_id=who[0], unit=who[1], event_id=event_id)


# [cuped]
def _covariate(
    index: int, raw: Mapping[str, Any], experiment: Experiment, who: tuple[str | None, str | None]
) -> OutcomeItem | ItemError:
    """``{"unit": ..., "covariate": 3.0}`` (one covariate) or ``{"unit": ..., "covariates": {"a":
    3.0, ...}}`` (any of them): the unit's pre-exposure covariates, each set once."""
    field = "covariates" if "covariates" in raw else "covariate"
    if not experiment.covariates:
        return ItemError(index, field, "this experiment declares no covariate (spec: `covariates: [NAME, ...]`)")
    extra = sorted(set(raw) & {"metric", "value", "event_id", "covariate"} - {field})
    if extra:
        return ItemError(index, extra[0], f"a covariate item takes only unit (or request_id) and {field}")
    values = _covariate_values(index, raw[field], experiment.covariates, field)
    if isinstance(values, ItemError):
        return values
    (metric, value), *more = values
    return OutcomeItem(index=index, metric=metric, value=value, request_id=who[0], unit=who[1], more=tuple(more))


def _covariate_values(index: int, raw: Any, names: tuple[str, ...], field: str) -> list[tuple[str, float]] | ItemError:
    """[(name, value)] of a ``covariate`` number (one declared) or a ``covariates`` object."""
    if field == "covariate":
        if len(names) > 1:
            return ItemError(
                index, field, f"this experiment has several: send covariates: {{name: value}} of {list(names)}"
            )
        raw = {names[0]: raw}
    elif not isinstance(raw, Mapping) or not raw:
        return ItemError(index, field, f"must be a non-empty object of covariate name to number, of {list(names)}")
    out: list[tuple[str, float]] = []
    for name, v in raw.items():
        path = field if field == "covariate" else f"{field}.{name}"
        if name not in names:
            return ItemError(index, path, f"unknown covariate {name!r}; declared: {', '.join(names)}")
        value = _value(index, v, "continuous", field=path)
        if isinstance(value, ItemError):
            return value
        out.append((name, value))
    return out


# [/cuped]


def _who(index: int, raw: Mapping[str, Any]) -> tuple[str | None, str | None] | ItemError:
    request_id, unit = raw.get("request_id"), raw.get("unit")
    if (request_id is None) == (unit is None):
        return ItemError(index, "request_id", "give exactly one of request_id or unit")
    for name, value in (("request_id", request_id), ("unit", unit)):
        if value is not None and not _short_string(value):
            return ItemError(index, name, f"must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    return request_id, unit


def _short_string(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def _value(index: int, value: Any, kind: str, field: str = "value") -> float | ItemError:
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, (int, float)):
        return ItemError(index, field, f"must be a number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # an integer literal with hundreds of digits
        return ItemError(index, field, "must be finite, got a number too large for a float")
    if not math.isfinite(value):
        return ItemError(index, field, f"must be finite, got {value}")
    if abs(value) > MAX_ABS_VALUE:
        return ItemError(index, field, f"must be at most {MAX_ABS_VALUE:g} in magnitude, got {value:g}")
    if kind == "binary" and value not in (0, 1):
        return ItemError(index, field, f"binary metric: must be 0 or 1 (or true/false), got {value}")
    return value
