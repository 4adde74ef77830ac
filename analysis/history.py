"""The decision history in Redis: one JSON entry per look in the ``decisions`` stream.

Each entry explains its decision in one line and carries the running minima of the
sequential p-values, because the next look reports a running minimum: an always-valid p
stays valid when minimised over looks, and the minimum only needs the previous one. Two
minima are kept per (variant, metric): over the looks where the candidate was better
(`p_better`, for wins) and worse (`p_worse`, for harm) than the control; `p` is the
smaller of the two, for reading. A look with an arm below `min_units_per_arm` carries the
previous minima over instead of its own p.

Stream entries have one field, ``decision``, holding JSON::

    {"at": 1700000000.0, "epoch": 3, "action": "ramp", "reason": "ramp: ...",
     "weights": {"control": 75.0, "candidate": 25.0}, "applied": true, "units": 20811,
     "sequential_p": [{"variant": "candidate", "metric": "revenue", "p": 0.031,
                       "p_better": 0.031, "p_worse": 0.84}, ...]}

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

from analysis.analyzer import AnalysisResult, PreviousP
from analysis.errors import SourceError
from router import keys as schema

FIELD = "decision"


@dataclass(frozen=True)
class Entry:
    """The part of a past look the next one needs."""

    units: int
    #: (variant, metric) -> (p_better, p_worse) running minima.
    sequential_p: dict[tuple[str, str], tuple[float, float]]

    def previous_p(self, units_now: int) -> PreviousP:
        """The running-minimum seed, unless the data was reset since (fewer units now)."""
        return self.sequential_p if units_now >= self.units else {}


def encode(result: AnalysisResult, *, applied: bool) -> str:
    d = result.decision
    doc: dict[str, Any] = {
        "at": result.at, "epoch": result.epoch, "action": d.action, "reason": d.reason,
        "weights": d.weights, "applied": applied, "units": sum(a.units for a in result.data.arms),
        "sequential_p": [{"variant": v, "metric": m, "p": min(better, worse), "p_better": better, "p_worse": worse}
                         for (v, m), (better, worse) in result.sequential_p().items()],
    }
    return json.dumps(doc, sort_keys=True)


def decode(raw: bytes | str) -> Entry:
    doc = json.loads(raw)
    return Entry(units=int(doc.get("units", 0)),
                 sequential_p={(x["variant"], x["metric"]): (float(x["p_better"]), float(x["p_worse"]))
                               for x in doc.get("sequential_p", []) if "p_better" in x and "p_worse" in x})


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


async def append(client: redis.asyncio.Redis, keys: schema.Keys, result: AnalysisResult, *,
                 applied: bool) -> None:
    try:
        await client.xadd(keys.decisions, {FIELD: encode(result, applied=applied)},
                          maxlen=schema.DECISIONS_MAXLEN, approximate=True)
    except redis.RedisError as exc:
        raise SourceError(f"cannot append to the decision history {keys.decisions}: {exc}") from exc
