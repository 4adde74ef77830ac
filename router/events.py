"""The events the router logs, and their pre-aggregation inside the process.

Pure: no Redis, no aiohttp, no clock. `Aggregator` folds a batch of events into one
cell per (unit, epoch, variant): the unit's exposures ``n`` and, per metric, the change
``dx`` of its ``x_u`` (a sum; the maximum for binary metrics) and the number of events.
``flush.lua`` then does per-cell work, not per-event work, and a flush stays one small
Redis command however busy the router is. The raw events ride along as JSON lines for
the capped audit stream. The layout they end up in is documented in `router.keys`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from router import keys
from router.experiment import BUILTIN_METRICS, Experiment

_ERRORS, _LATENCY = BUILTIN_METRICS  # measured by the router on every exposure


@dataclass(frozen=True, slots=True)
class Exposure:
    """One proxied request: the unit saw `variant`, assigned under weights `epoch`."""

    request_id: str
    unit_hash: str
    variant: str
    epoch: int
    ts: float
    status: int
    latency_ms: float
    error: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """A value of `metric` that a client reported, credited to the unit's (epoch, variant)."""

    unit_hash: str
    variant: str
    epoch: int
    metric: str
    value: float
    ts: float
    request_id: str | None = None


Event = Exposure | Outcome


@dataclass(frozen=True, slots=True)
class Batch:
    """One flush, ready for ``flush.lua`` (and, while Redis is away, for the spill file).

    `payload` is the JSON document the script decodes; `events` the raw events as JSON
    lines, passed through untouched to the audit stream (Lua's cjson would round floats
    such as timestamps to 14 digits).
    """

    producer: str
    seq: int
    payload: str
    events: str
    n_events: int


def binary_metrics(experiment: Experiment) -> frozenset[str]:
    return frozenset(m.name for m in experiment.metrics if m.kind == "binary")


def encode_event(event: Event) -> str:
    """One raw event as a JSON line (without the newline)."""
    doc: dict[str, Any]
    if isinstance(event, Exposure):
        doc = {"type": "exposure", "request_id": event.request_id, "unit_hash": event.unit_hash,
               "variant": event.variant, "epoch": event.epoch, "ts": event.ts, "status": event.status,
               "latency_ms": event.latency_ms, "error": event.error}
    else:
        doc = {"type": "outcome", "request_id": event.request_id, "unit_hash": event.unit_hash,
               "variant": event.variant, "epoch": event.epoch, "ts": event.ts, "metric": event.metric,
               "value": event.value}
    return json.dumps(doc, separators=(",", ":"))


class _Cell:
    """The change one batch makes to one unit in one (epoch, variant) stratum."""

    __slots__ = ("n", "dx", "count")

    def __init__(self, width: int) -> None:
        self.n = 0
        self.dx = [0.0] * width
        self.count = [0] * width

    def widen(self, width: int) -> None:
        self.dx.extend([0.0] * (width - len(self.dx)))
        self.count.extend([0] * (width - len(self.count)))


class Aggregator:
    """The events of one batch, pre-aggregated per (unit_hash, epoch, variant).

    `metrics` is `keys.metric_order(experiment)`: the built-ins first. ``len()`` is the
    number of raw events held, which is what bounds a batch.
    """

    def __init__(self, metrics: Sequence[str], binary: Collection[str]) -> None:
        if tuple(metrics[:len(BUILTIN_METRICS)]) != BUILTIN_METRICS:
            raise ValueError(f"metrics must start with the built-ins {BUILTIN_METRICS}, got {list(metrics)}")
        self._metrics: list[str] = []
        self._column: dict[str, int] = {}
        self._binary: set[str] = set()
        self._cells: dict[tuple[str, int, str], _Cell] = {}
        self._latest: dict[str, tuple[int, str]] = {}
        self._epochs: dict[int, str] = {}
        self._events: list[Event] = []
        self.extend_metrics(metrics, binary)

    def __len__(self) -> int:
        return len(self._events)

    @property
    def empty(self) -> bool:
        """True when a flush would carry nothing (no events and no epoch to register)."""
        return not self._events and not self._epochs

    def extend_metrics(self, metrics: Sequence[str], binary: Collection[str]) -> None:
        """Adopt a longer metric list (a config reload); existing metrics keep their column."""
        for name in metrics:
            if name not in self._column:
                self._column[name] = len(self._metrics)
                self._metrics.append(name)
        self._binary |= set(binary) & set(self._column)
        for cell in self._cells.values():
            cell.widen(len(self._metrics))

    def add_exposure(self, e: Exposure) -> None:
        cell = self._cell(e.unit_hash, e.epoch, e.variant)
        cell.n += 1
        errors, latency = self._column[_ERRORS], self._column[_LATENCY]
        cell.dx[errors] += 1.0 if e.error else 0.0
        cell.count[errors] += 1
        cell.dx[latency] += e.latency_ms
        cell.count[latency] += 1
        self._latest[e.unit_hash] = (e.epoch, e.variant)
        self._events.append(e)

    def add_outcome(self, o: Outcome) -> None:
        column = self._column.get(o.metric)
        if column is None or o.metric in BUILTIN_METRICS:
            raise ValueError(f"outcome for unknown metric {o.metric!r}; known: {self._metrics[2:]}")
        cell = self._cell(o.unit_hash, o.epoch, o.variant)
        if o.metric in self._binary:
            cell.dx[column] = max(cell.dx[column], o.value)  # x_u is "converted at least once"
        else:
            cell.dx[column] += o.value
        cell.count[column] += 1
        self._events.append(o)

    def add_epoch(self, epoch: int, info: str) -> None:
        """Register an epoch (`keys.encode_epoch` JSON); the script keeps the first one seen."""
        self._epochs.setdefault(epoch, info)

    def batch(self, *, producer: str, seq: int) -> Batch:
        """Encode the batch; the aggregator should not be used afterwards."""
        payload = {
            "metrics": self._metrics,
            "binary": sorted(self._binary),
            "cells": [[h, str(e), v, c.n, c.dx, c.count] for (h, e, v), c in self._cells.items()],
            "latest": [[h, keys.stratum(e, v)] for h, (e, v) in self._latest.items()],
            "epochs": [[str(e), info] for e, info in self._epochs.items()],
            "n": len(self._events),
        }
        return Batch(producer=producer, seq=seq, payload=json.dumps(payload, separators=(",", ":")),
                     events="\n".join(encode_event(e) for e in self._events), n_events=len(self._events))

    def _cell(self, unit_hash: str, epoch: int, variant: str) -> _Cell:
        key = (unit_hash, epoch, variant)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell(len(self._metrics))
        return cell
