"""The format of one entry in an experiment's ``decisions`` stream (`keys.Keys.decisions`).

The analyzer writes one entry per look and reads the latest back; the demo's report and
a Kubernetes status read them too, so the format lives here, beside the key schema, and
belongs to neither side. Stream entries have one field, `FIELD`, holding JSON::

    {"at": 1700000000.0, "epoch": 3, "action": "ramp", "reason": "ramp: ...",
     "weights": {"control": 75.0, "candidate": 25.0}, "applied": true, "units": 20811,
     "sequential_p": [{"variant": "candidate", "metric": "revenue", "p": 0.031,
                       "p_better": 0.031, "p_worse": 0.84,
                       "ci_absolute": [0.02, 0.91], "ci_relative": [0.004, 0.19]}, ...]}

Each entry carries the sequential results so far, because the next look reports running
ones: an always-valid p stays valid when minimised over looks, a confidence sequence when
intersected. Two minima are kept per (variant, metric): over the looks where the
candidate was better (`p_better`, for wins) and worse (`p_worse`, for harm) than the
control; `p` is the smaller, for reading. `ci_absolute` and `ci_relative` are absent
before there is one. ``anchors`` (absent before there are any, and in older entries)
carry the novelty check's state: the estimate at earlier looks, each as [start,
information, difference, variance, at]; ``reference`` (absent before there is one, and in
older entries) the decision design's first look, in the same form, which sets its
information clock. An item written before the two minima existed (only ``p``) seeds
nothing: its ``p`` does not say in which direction it was reached. ``pinned`` (absent in
entries written before it existed) holds the `PINNED` settings of the experiment's first
look: later looks use them, whatever the spec says now.

Since the report needs them over time, an entry also carries ``arms``: per arm its weight,
units, exposures, the primary metric's mean, the mean latency and the units the split
expects, and for candidates the primary metric's relative lift with the look's
always-valid interval (``lift``, ``lift_ci``; absent for the control). Entries written
before ``arms`` existed have none; readers must not need them. ``latency_p50_ms`` and
``latency_p95_ms`` are the arm's latency quantiles over the requests it served in the
look's epoch (since the weights last changed), read from the ``latency`` histogram;
absent in entries written before them, or when the arm served nothing in that epoch.

The stream is capped at about `keys.DECISIONS_MAXLEN` entries (``XADD MAXLEN ~``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FIELD = "decision"


@dataclass(frozen=True)
class SequentialEntry:
    variant: str
    metric: str
    p_better: float
    p_worse: float
    ci_absolute: tuple[float, float] | None = None
    ci_relative: tuple[float, float] | None = None
    #: The novelty check's anchors (the analyzer's `stats.stability.Anchor`), each as
    #: (start, information, difference, variance, at).
    anchors: tuple[tuple[float, ...], ...] = ()
    #: The decision design's first look (the analyzer's `stats.clock` reference), in the
    #: anchors' form; None before there is one.
    reference: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ArmEntry:
    name: str
    weight: float
    units: int
    exposures: int
    expected_units: float | None = None
    mean: float | None = None
    latency_ms: float | None = None
    lift: float | None = None
    lift_ci: tuple[float, float] | None = None
    #: Latency quantiles (ms) of the requests the arm served in the look's epoch, from the
    #: router's histogram; absent in older entries and without requests in the epoch.
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


@dataclass(frozen=True)
class DecisionEntry:
    at: float
    epoch: int
    action: str
    reason: str
    weights: dict[str, float]
    applied: bool
    units: int
    sequential: tuple[SequentialEntry, ...] = field(default_factory=tuple)
    arms: tuple[ArmEntry, ...] = field(default_factory=tuple)
    #: Settings the sequential test depends on, pinned at the first look (`PINNED`).
    pinned: dict[str, float] = field(default_factory=dict)


#: Analysis settings fixed at the first look: changing them mid-experiment changes τ² (or
#: the level) under running minima that assumed the old ones, which voids the guarantee.
PINNED = ("alpha", "expected_units_per_arm")


def encode(entry: DecisionEntry) -> str:
    doc: dict[str, Any] = {
        "at": entry.at,
        "epoch": entry.epoch,
        "action": entry.action,
        "reason": entry.reason,
        "weights": entry.weights,
        "applied": entry.applied,
        "units": entry.units,
        "sequential_p": [_encode_sequential(s) for s in entry.sequential],
    }
    if entry.arms:
        doc["arms"] = [{k: v for k, v in vars(a).items() if v is not None} for a in entry.arms]
    if entry.pinned:
        doc["pinned"] = dict(entry.pinned)
    return json.dumps(doc, sort_keys=True)


def _encode_sequential(s: SequentialEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "variant": s.variant,
        "metric": s.metric,
        "p": min(s.p_better, s.p_worse),
        "p_better": s.p_better,
        "p_worse": s.p_worse,
    }
    for name in ("ci_absolute", "ci_relative"):
        pair = getattr(s, name)
        if pair is not None:
            doc[name] = list(pair)
    if s.anchors:
        doc["anchors"] = [_finite(a) for a in s.anchors]
    if s.reference is not None:
        doc["reference"] = _finite(s.reference)
    return doc


def _finite(values: tuple[float, ...]) -> list[float | None]:
    """JSON has no NaN: an unknown time is null."""
    return [v if v == v else None for v in values]


def _floats(values: list[Any]) -> tuple[float, ...]:
    return tuple(float("nan") if v is None else float(v) for v in values)


def decode(raw: bytes | str) -> DecisionEntry:
    """ValueError, KeyError or TypeError for an entry that is not in this format."""
    doc = json.loads(raw)
    return DecisionEntry(
        at=float(doc.get("at", 0.0)),
        epoch=int(doc.get("epoch", 0)),
        action=str(doc.get("action", "")),
        reason=str(doc.get("reason", "")),
        weights={str(k): float(v) for k, v in (doc.get("weights") or {}).items()},
        applied=bool(doc.get("applied", False)),
        units=int(doc.get("units", 0)),
        sequential=tuple(
            _decode_sequential(x) for x in doc.get("sequential_p", []) if "p_better" in x and "p_worse" in x
        ),
        arms=tuple(_decode_arm(a) for a in doc.get("arms", [])),
        pinned={str(k): float(v) for k, v in (doc.get("pinned") or {}).items() if k in PINNED},
    )


def _decode_arm(a: dict[str, Any]) -> ArmEntry:
    ci = a.get("lift_ci")
    return ArmEntry(
        name=str(a["name"]),
        weight=float(a["weight"]),
        units=int(a["units"]),
        exposures=int(a.get("exposures", 0)),
        expected_units=_float(a.get("expected_units")),
        mean=_float(a.get("mean")),
        latency_ms=_float(a.get("latency_ms")),
        lift=_float(a.get("lift")),
        lift_ci=(float(ci[0]), float(ci[1])) if ci is not None else None,
        latency_p50_ms=_float(a.get("latency_p50_ms")),
        latency_p95_ms=_float(a.get("latency_p95_ms")),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _decode_sequential(x: dict[str, Any]) -> SequentialEntry:
    def pair(name: str) -> tuple[float, float] | None:
        value = x.get(name)
        return (float(value[0]), float(value[1])) if value is not None else None

    return SequentialEntry(
        variant=str(x["variant"]),
        metric=str(x["metric"]),
        p_better=float(x["p_better"]),
        p_worse=float(x["p_worse"]),
        ci_absolute=pair("ci_absolute"),
        ci_relative=pair("ci_relative"),
        anchors=tuple(_floats(a) for a in x.get("anchors", [])),
        reference=_floats(x["reference"]) if x.get("reference") is not None else None,
    )
