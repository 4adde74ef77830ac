"""The decision history in Redis: one entry per look in the ``decisions`` stream.

The entry's format is part of the shared contract (`abrouter.contract.history`); this
module turns an `AnalysisResult` into an entry, reads the latest one back as the seed of
the next look (`Entry`), and does the Redis I/O.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import redis

from abrouter import redisclient
from abrouter.analysis.analyzer import AnalysisResult, Previous
from abrouter.analysis.errors import SourceError
from abrouter.analysis.stats import histogram, stability
from abrouter.analysis.stats.compare import Running
from abrouter.contract import history as fmt
from abrouter.contract import keys as schema
from abrouter.contract.model import AnalysisSettings

FIELD = fmt.FIELD


@dataclass(frozen=True)
class Entry:
    """The part of a past look the next one needs."""

    units: int
    running: dict[tuple[str, str], Running]
    #: The settings pinned at the first look (empty in entries written before pinning).
    pinned: dict[str, float] = field(default_factory=dict)
    #: The candidate this look promoted (its action "promote", the candidate at 100%), if
    #: any: the next look keeps the promotion instead of re-testing it (`decision`, rule 1).
    promoted: str | None = None

    def previous(self, units_now: int) -> Previous:
        """The seed of the next look, unless the data was reset since (fewer units now)."""
        return self.running if units_now >= self.units else {}


def entry(result: AnalysisResult, *, applied: bool) -> fmt.DecisionEntry:
    d = result.decision
    return fmt.DecisionEntry(
        at=result.at,
        epoch=result.epoch,
        action=d.action,
        reason=d.reason,
        weights=dict(d.weights),
        applied=applied,
        units=sum(a.units for a in result.data.arms),
        sequential=tuple(
            fmt.SequentialEntry(
                v, m, r.p_better, r.p_worse, r.ci_absolute, r.ci_relative, _anchors(r.anchors), _row(r.reference)
            )
            for (v, m), r in result.running().items()
        ),
        arms=tuple(_arm(result, a.name) for a in result.data.arms),
        pinned=pinned_of(result.data.settings),
    )


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _arm(result: AnalysisResult, name: str) -> fmt.ArmEntry:
    """One arm of this look, as the report plots it over time."""
    arm = result.data.arm(name)
    c, mean = result.primary_of(name)
    latency = arm.pooled("latency_ms", ratio=True).mean if arm.strata else None
    ci = c.sequential_ci if c is not None else None
    # The look's epoch only: what the arm serves under the current weights, so a ramp
    # step's (load-dependent) regression shows instead of being averaged into the past.
    epoch_latency = arm.latency.get(result.epoch, ())
    return fmt.ArmEntry(
        name=name,
        weight=arm.weight,
        units=arm.units,
        exposures=arm.exposures,
        expected_units=_finite(result.srm.expected.get(name)),
        mean=_finite(mean),
        latency_ms=_finite(latency),
        lift=_finite(c.relative_lift) if c is not None else None,
        lift_ci=ci if ci is not None and all(math.isfinite(x) for x in ci) else None,
        latency_p50_ms=histogram.quantile(epoch_latency, 0.5),
        latency_p95_ms=histogram.quantile(epoch_latency, 0.95),
    )


def pinned_of(settings: AnalysisSettings) -> dict[str, float]:
    return {name: float(getattr(settings, name)) for name in fmt.PINNED}


def pin(settings: AnalysisSettings, pinned: dict[str, float]) -> tuple[AnalysisSettings, dict[str, float]]:
    """`settings` with the pinned values, and the spec's values that were overridden."""
    if not pinned:
        return settings, {}
    ignored = {k: float(getattr(settings, k)) for k, v in pinned.items() if float(getattr(settings, k)) != v}
    values: dict[str, Any] = {k: (int(v) if k == "expected_units_per_arm" else v) for k, v in pinned.items()}
    return dataclasses.replace(settings, **values), ignored


def encode(result: AnalysisResult, *, applied: bool) -> str:
    return fmt.encode(entry(result, applied=applied))


def decode(raw: bytes | str) -> Entry:
    e = fmt.decode(raw)
    return Entry(
        units=e.units,
        running={
            (s.variant, s.metric): Running(
                s.p_better, s.p_worse, s.ci_absolute, s.ci_relative, _from_anchors(s.anchors), _from_anchor(s.reference)
            )
            for s in e.sequential
        },
        pinned=dict(e.pinned),
        promoted=_promoted(e),
    )


def _promoted(e: fmt.DecisionEntry) -> str | None:
    if e.action != "promote":
        return None
    return next((name for name, w in e.weights.items() if w >= 100.0 - 1e-6), None)


def _anchors(anchors: tuple[stability.Anchor, ...]) -> tuple[tuple[float, ...], ...]:
    return tuple((float(a.start), a.information, a.difference, a.variance, a.at) for a in anchors)


def _row(a: stability.Anchor | None) -> tuple[float, ...] | None:
    return _anchors((a,))[0] if a is not None else None


def _from_anchors(rows: tuple[tuple[float, ...], ...]) -> tuple[stability.Anchor, ...]:
    return tuple(a for a in (_from_anchor(r) for r in rows) if a is not None)


def _from_anchor(row: tuple[float, ...] | None) -> stability.Anchor | None:
    """An anchor from the history; None for a row of another shape (a newer or damaged entry)."""
    if row is None or len(row) != 5:
        return None
    start, information, difference, variance, at = row
    return stability.Anchor(int(start), information, difference, variance, at)


async def last(client: redisclient.Client, keys: schema.Keys) -> Entry | None:
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


async def append(client: redisclient.Client, keys: schema.Keys, result: AnalysisResult, *, applied: bool) -> None:
    await append_encoded(client, keys, encode(result, applied=applied))


async def append_encoded(client: redisclient.Client, keys: schema.Keys, raw: str) -> None:
    try:
        await client.xadd(keys.decisions, {FIELD: raw}, maxlen=schema.DECISIONS_MAXLEN, approximate=True)
    except redis.RedisError as exc:
        raise SourceError(f"cannot append to the decision history {keys.decisions}: {exc}") from exc


async def append_once(client: redisclient.Client, keys: schema.Keys, raw: str, *, within: int = 100) -> bool:
    """Append the encoded entry `raw` unless one of the last `within` entries is it; True if appended.

    Redoing an unfinished decision (`sinks.kube_pending`) appends its entry once.
    """
    try:
        recent = await client.xrevrange(keys.decisions, count=within)
    except redis.RedisError as exc:
        raise SourceError(f"cannot read the decision history {keys.decisions}: {exc}") from exc
    for _, fields in recent or []:
        value = (fields or {}).get(FIELD.encode()) or (fields or {}).get(FIELD)
        if value is not None and (value.decode() if isinstance(value, bytes) else value) == raw:
            return False
    await append_encoded(client, keys, raw)
    return True


async def entries(client: redisclient.Client, keys: schema.Keys) -> list[fmt.DecisionEntry]:
    """Every readable entry, oldest first (the stream is capped, so this is bounded)."""
    try:
        raw = await client.xrange(keys.decisions)
    except redis.RedisError as exc:
        raise SourceError(f"cannot read the decision history {keys.decisions}: {exc}") from exc
    out = []
    for _, fields in raw or []:
        value = (fields or {}).get(FIELD.encode()) or (fields or {}).get(FIELD)
        if value is None:
            continue
        try:
            out.append(fmt.decode(value))
        except (ValueError, KeyError, TypeError):
            continue
    return out
