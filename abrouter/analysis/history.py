"""The decision history in Redis: one JSON entry per look in the ``decisions`` stream.

Each entry explains its decision in one line and carries the sequential results so far,
because the next look reports running ones: an always-valid p stays valid when minimised
over looks, and a confidence sequence when intersected over looks, and each needs only
the previous value (`analysis.stats.compare.Running`). Two minima are kept per
(variant, metric): over the looks where the candidate was better (`p_better`, for wins)
and worse (`p_worse`, for harm) than the control; `p` is the smaller of the two, for
reading. `ci_absolute` and `ci_relative` are the intersected confidence sequences (absent
before there is one). A look with an arm below `min_units_per_arm` carries the previous
results over instead of its own.

Stream entries have one field, ``decision``, holding JSON::

    {"at": 1700000000.0, "epoch": 3, "action": "ramp", "reason": "ramp: ...",
     "weights": {"control": 75.0, "candidate": 25.0}, "applied": true, "units": 20811,
     "sequential_p": [{"variant": "candidate", "metric": "revenue", "p": 0.031,
                       "p_better": 0.031, "p_worse": 0.84,
                       "ci_absolute": [0.02, 0.91], "ci_relative": [0.004, 0.19]}, ...]}

An entry written before the two minima existed (only ``p``) seeds nothing: its ``p`` does
not say in which direction it was reached.

The stream is capped at about `keys.DECISIONS_MAXLEN` entries (``XADD MAXLEN ~``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from abrouter.analysis.analyzer import AnalysisResult, Previous
from abrouter.analysis.errors import SourceError
from abrouter.analysis.stats.compare import Running
from abrouter.contract import keys as schema

FIELD = "decision"


@dataclass(frozen=True)
class Entry:
    """The part of a past look the next one needs."""

    units: int
    running: dict[tuple[str, str], Running]

    def previous(self, units_now: int) -> Previous:
        """The seed of the next look, unless the data was reset since (fewer units now)."""
        return self.running if units_now >= self.units else {}


def encode(result: AnalysisResult, *, applied: bool) -> str:
    d = result.decision
    doc: dict[str, Any] = {
        "at": result.at,
        "epoch": result.epoch,
        "action": d.action,
        "reason": d.reason,
        "weights": d.weights,
        "applied": applied,
        "units": sum(a.units for a in result.data.arms),
        "sequential_p": [_encode_running(v, m, r) for (v, m), r in result.running().items()],
    }
    return json.dumps(doc, sort_keys=True)


def _encode_running(variant: str, metric: str, r: Running) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "variant": variant,
        "metric": metric,
        "p": min(r.p_better, r.p_worse),
        "p_better": r.p_better,
        "p_worse": r.p_worse,
    }
    for name in ("ci_absolute", "ci_relative"):
        pair = getattr(r, name)
        if pair is not None:
            doc[name] = list(pair)
    return doc


def decode(raw: bytes | str) -> Entry:
    doc = json.loads(raw)
    return Entry(
        units=int(doc.get("units", 0)),
        running={
            (x["variant"], x["metric"]): _decode_running(x)
            for x in doc.get("sequential_p", [])
            if "p_better" in x and "p_worse" in x
        },
    )


def _decode_running(x: dict[str, Any]) -> Running:
    def pair(name: str) -> tuple[float, float] | None:
        value = x.get(name)
        return (float(value[0]), float(value[1])) if value is not None else None

    return Running(float(x["p_better"]), float(x["p_worse"]), pair("ci_absolute"), pair("ci_relative"))


async def last(client: redis.asyncio.Redis, keys: schema.Keys) -> Entry | None:
    """The latest entry, or None; an unreadable entry counts as none (the minimum restarts)."""
    try:
        entries = await client.xrevrange(keys.decisions, count=1)
    except redis.RedisError as exc:
        raise SourceError(f"cannot read the decision history {keys.decisions}: {exc}") from exc
    if not entries:
        return None
    _, fields = entries[0]
    raw = (fields or {}).get(FIELD.encode()) or (fields or {}).get(FIELD)
    try:
        return decode(raw) if raw is not None else None
    except (ValueError, KeyError, TypeError):
        return None


async def append(client: redis.asyncio.Redis, keys: schema.Keys, result: AnalysisResult, *, applied: bool) -> None:
    try:
        await client.xadd(
            keys.decisions, {FIELD: encode(result, applied=applied)}, maxlen=schema.DECISIONS_MAXLEN, approximate=True
        )
    except redis.RedisError as exc:
        raise SourceError(f"cannot append to the decision history {keys.decisions}: {exc}") from exc
