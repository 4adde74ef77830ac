"""The reserved endpoints under ``/abrouter/``, apart from any server: health, readiness,
metrics, the running experiment, and the outcome API. Every error here is JSON naming the
problem (the Open Inference Protocol's shape: ``{"error": text, "code": word}``).

A server adapter reads the request's head and its body (at most `MAX_BODY` bytes; it
answers 413 itself beyond that), calls `handle` and writes the `Reply`.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from abrouter.contract import experiment as model
from abrouter.contract.keys import unit_hash
from abrouter.router import metrics as prom
from abrouter.router import outcomes as oc
from abrouter.router import workerfiles, workers
from abrouter.router.errors import BatchError, EventLogUnavailable, RequestIdError
from abrouter.router.eventlog.events import Outcome
from abrouter.router.exchange import FORCED_EPOCH, header
from abrouter.router.state import Lane, Router

PREFIX = "/abrouter"
#: The largest request body an endpoint reads whole (the outcome API), inflated or not.
MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """A request to a reserved endpoint, as the adapter read it."""

    method: str
    #: The path, without the query.
    path: str
    #: Raw header fields in order, decoded as latin-1.
    headers: Sequence[tuple[str, str]]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    """A response the router makes itself."""

    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


def json_reply(status: int, payload: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), headers or [])


def error(status: int, code: str, message: str, **extra: Any) -> Reply:
    # The Open Inference Protocol shape: `error` is the readable text (clients print it).
    return json_reply(status, {"error": message, "code": code, **extra})


def too_large() -> Reply:
    """What an adapter answers to a body over `MAX_BODY`."""
    return error(413, "too_large", f"body exceeds {MAX_BODY} bytes; send at most {oc.MAX_BATCH} outcomes")


async def healthz(router: Router, request: Request) -> Reply:
    return json_reply(200, {"status": "ok"})


async def readyz(router: Router, request: Request) -> Reply:
    """Ready while predictions can flow; a Redis outage only degrades it (events spill).

    Under --workers N, ready only while every worker serves (has a fresh snapshot)."""
    stats = router.eventlog_stats()
    if not router.event_logging:
        redis = "disabled"  # --no-event-log: nothing depends on Redis
    else:
        redis = "up" if stats.redis_up else "degraded"
    body: dict[str, Any] = {
        "status": "ready",
        "redis": redis,
        "buffered_events": stats.buffered,
        "spilled_events": stats.spilled,
    }
    if stats.data_incomplete_since is not None:
        # Redis restarted empty: what was flushed before this time is gone.
        body["data_incomplete_since"] = stats.data_incomplete_since
        body["redis_resets"] = stats.redis_resets
    if (denied := _access_error(router)) is not None:  # the spec can no longer be read (sources.base.Access)
        # Still ready: predictions flow on the last spec, and a Role broken under running
        # pods must not take them all out of the Service. Said here, at /experiment and in
        # abrouter_spec_source_up, for an alert.
        body["spec_source"] = "denied"
        body["reload_error"] = denied
    if (slot := router.workers) is not None:
        live, _ = workerfiles.read(slot.directory)
        gone = workers.missing(slot, live, time.time())
        body.update(worker=slot.index, workers=slot.count)  # which one answered, of how many
        if gone:
            body.update(status="not_ready", missing_workers=gone)
            body["error"] = f"{len(gone)} of {slot.count} workers are not serving: {gone}"
            return json_reply(503, body)
    return json_reply(200, body)


async def metrics(router: Router, request: Request) -> Reply:
    """Under --workers N, the sum over the workers: this one's live numbers and the others' snapshots."""
    m, s, conns = router.metrics, router.eventlog_stats(), workers.connections_of(router.guard)
    if (slot := router.workers) is not None:
        live, retired = workerfiles.read(slot.directory)
        live[slot.index] = workerfiles.snapshot_of(router, slot, time.time())
        m, s, conns = workers.total(live.values(), retired)
    extra = {
        "abrouter_eventlog_buffered_events": ("gauge", "Events waiting in memory for the next flush.", s.buffered),
        "abrouter_eventlog_spilled_events": ("gauge", "Events in the local spill file, waiting for Redis.", s.spilled),
        "abrouter_eventlog_flush_failures_total": (
            "counter",
            "Flush rounds that could not reach Redis.",
            s.flush_failures,
        ),
        "abrouter_eventlog_dropped_events_total": (
            "counter",
            "Events lost because neither Redis nor the spill file could take them.",
            s.dropped,
        ),
        "abrouter_outcomes_repeated_total": (
            "counter",
            "Outcomes not counted because their event_id was already recorded.",
            s.repeated_outcomes,
        ),
        "abrouter_eventlog_quarantined_events_total": (
            "counter",
            "Events set aside in the quarantine file because Redis refused their batch.",
            s.quarantined,
        ),
        "abrouter_redis_resets_total": (
            "counter",
            "Times Redis was found to have lost the experiment's data (restarted empty).",
            s.redis_resets,
        ),
        "abrouter_eventlog_spill_full_events_total": (
            "counter",
            "Events lost because the spill file reached its size cap (Redis down too long).",
            s.spill_full_dropped,
        ),
        "abrouter_eventlog_spill_bytes": ("gauge", "Bytes in this process's spill file.", s.spill_bytes),
        "abrouter_eventlog_lost_events_total": (
            "counter",
            "Events Redis acknowledged and later lost (it came back older or empty), no longer held to re-send.",
            s.lost_events,
        ),
        "abrouter_eventlog_shed_events_total": (
            "counter",
            "Events not logged because too many waited for a Redis that could not keep up (also in dropped).",
            s.shed,
        ),
        "abrouter_redis_up": ("gauge", "1 while the last flush reached Redis.", 1.0 if s.redis_up else 0.0),
        "abrouter_spec_source_up": (
            "gauge",
            "0 while the spec's source refuses this router (a 401/403 from the Kubernetes API).",
            0.0 if _access_error(router) is not None else 1.0,
        ),
        "abrouter_experiments": ("gauge", "Experiments this router serves.", len(router.lanes)),
    }
    extra.update(_connection_metrics(conns))
    only = router.lanes.only
    text = prom.render(m, labels={"experiment": only.name} if only else {}, extra=extra)
    text += "".join(
        [
            "# HELP abrouter_weights_epoch The weights epoch being served.\n",
            "# TYPE abrouter_weights_epoch gauge\n",
            *(f'abrouter_weights_epoch{{experiment="{lane.name}"}} {lane.table.epoch}\n' for lane in router.lanes),
        ]
    )
    return Reply(200, text.encode(), [("Cache-Control", "no-store")], content_type="text/plain; charset=utf-8")


def _access_error(router: Router) -> str | None:
    """Why a spec source can no longer read its spec (the namespace's, or any experiment's), or None."""
    errors = [router.source.access_error, *(lane.source.access_error for lane in router.lanes)]
    return next((e for e in errors if e is not None), None)


def _connection_metrics(conns: workers.Connections) -> dict[str, tuple[str, str, float]]:
    return {
        "abrouter_connections_open": ("gauge", "Client connections open now.", conns.open),
        "abrouter_connections_refused_total": (
            "counter",
            "Client connections closed at once because the connection cap was reached.",
            conns.refused,
        ),
        **{
            f"abrouter_client_{phase}_timeouts_total": (
                "counter",
                f"Client connections closed by the {phase} deadline.",
                n,
            )
            for phase, n in conns.timeouts.items()
        },
    }


def _authorized(router: Router, request: Request) -> bool:
    """Whether the request carries the configured bearer token (False when none is configured).

    The header's bytes are compared as they came: a value that is not ASCII (or not UTF-8)
    is simply not the token.
    """
    token = router.api_token
    value = next((v for k, v in request.headers if k.lower() == "authorization"), "")
    scheme, _, given = value.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), token)


def _unauthorized(router: Router, request: Request) -> Reply | None:
    """A 401 when a token is configured and the request lacks it; None when it may proceed."""
    if not router.api_token or _authorized(router, request):
        return None
    return json_reply(
        401,
        {"error": "this endpoint needs Authorization: Bearer <ABROUTER_API_TOKEN>", "code": "unauthorized"},
        [("WWW-Authenticate", 'Bearer realm="abrouter"')],
    )


def _public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec without what predicts assignment (the salt) or locates the models (upstreams)."""
    out = {k: v for k, v in spec.items() if k != "salt"}
    out["variants"] = [{k: v for k, v in variant.items() if k != "upstream"} for variant in spec["variants"]]
    return out


async def experiment(router: Router, request: Request) -> Reply:
    """The experiment served; with several, ``{"experiments": [...]}`` of the same objects."""
    denied = _unauthorized(router, request)
    if denied is not None:
        return denied
    authorized = _authorized(router, request)
    shown = [_lane_view(lane, authorized) for lane in router.lanes]
    if router.lanes.only is not None and router.source.last_error is None:
        return json_reply(200, shown[0])
    return json_reply(200, {"experiments": shown, "reload_error": router.source.last_error})


def _lane_view(lane: Lane, authorized: bool) -> dict[str, Any]:
    table = lane.table
    spec = model.to_dict(table.experiment)
    return {
        # Salt and upstream URLs only to a holder of the token.
        "spec": spec if authorized else _public_spec(spec),
        "weights": table.weights_by_name(),
        "epoch": table.epoch,
        "epoch_since": table.since,
        "reload_error": lane.source.last_error,
    }


class _BadEncoding(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _inflate(request: Request) -> bytes:
    """The body, inflated when the client compressed it (the server leaves bodies as sent).

    Bounded like an uncompressed body (`MAX_BODY`): a gzip bomb is a 413 after at most
    that many bytes of output.
    """
    encoding = (header(request.headers, "Content-Encoding") or "identity").strip().lower()
    if encoding == "identity":
        return request.body
    if encoding not in ("gzip", "deflate", "x-gzip"):
        raise _BadEncoding(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: use gzip, deflate or none")
    inflater = zlib.decompressobj(wbits=47)  # 47: gzip or zlib, detected from the header
    try:
        out = inflater.decompress(request.body, MAX_BODY + 1)
    except zlib.error as exc:
        raise _BadEncoding(400, "invalid_body", f"body is not valid {encoding}: {exc}") from None
    if len(out) > MAX_BODY:
        raise _BadEncoding(
            413, "too_large", f"inflated body exceeds {MAX_BODY} bytes; send at most {oc.MAX_BATCH} outcomes"
        )
    return out


async def outcomes(router: Router, request: Request) -> Reply:
    denied = _unauthorized(router, request)
    if denied is not None:
        return denied
    try:
        raw_items = oc.items_of(json.loads(_inflate(request)))
    except _BadEncoding as exc:
        return error(exc.status, exc.code, str(exc))
    except RecursionError:
        return error(400, "invalid_body", "body must be JSON: nested too deeply")
    except BatchError as exc:
        return error(400, "invalid_body", str(exc))
    except (ValueError, UnicodeDecodeError) as exc:  # json's own errors
        return error(400, "invalid_body", f"body must be JSON: {exc}")
    try:
        resolved = await _resolve(router, raw_items)
    except EventLogUnavailable:
        return error(
            503,
            "redis_unavailable",
            "cannot look up units while Redis is unreachable; nothing "
            "was recorded, retry later (outcomes by request_id need no lookup)",
        )
    failures = [r for r in resolved if isinstance(r, oc.ItemError)]
    if failures:
        router.metrics.outcomes_rejected += len(failures)
        return error(
            422,
            "invalid_outcomes",
            f"{len(failures)} of {len(raw_items)} outcomes are invalid; nothing was recorded",
            items=[f.to_dict() for f in failures],
        )
    counts: dict[str, int] = {}
    repeated = 0
    for lane, o in resolved:  # type: ignore[misc]  # no ItemError left
        if not lane.eventlog.record_outcome(o):
            repeated += 1  # its event_id is already waiting in this batch
            continue
        router.metrics.outcomes[(lane.name, o.metric)] += 1
        counts[o.metric] = counts.get(o.metric, 0) + 1
    return json_reply(202, {"accepted": len(raw_items), "by_metric": counts, "repeated": repeated})


async def _resolve(router: Router, raw_items: list[Any]) -> list[tuple[Lane, Outcome] | oc.ItemError]:
    """Each item's experiment, checked item and outcome (looking units up in Redis, per experiment)."""
    now = time.time()
    checked: list[tuple[Lane, oc.OutcomeItem] | oc.ItemError] = []
    for i, raw in enumerate(raw_items):
        lane = _lane_of(router, i, raw, now)
        item = lane if isinstance(lane, oc.ItemError) else oc.validate_item(i, raw, lane.table.experiment)
        checked.append(item if isinstance(item, oc.ItemError) else (lane, item))  # type: ignore[arg-type]
    units: dict[str, dict[str, str]] = {}  # experiment -> unit -> hash
    for c in checked:
        if not isinstance(c, oc.ItemError) and c[1].unit is not None and c[1].request_id is None:
            units.setdefault(c[0].name, {})[c[1].unit] = unit_hash(c[1].unit)
    found: dict[str, dict[str, tuple[int, str] | None]] = {}
    for name, hashes in units.items():
        strata = await router.lane(name).eventlog.lookup_units(list(hashes.values()))
        found[name] = {u: strata[h] for u, h in hashes.items()}
    out: list[tuple[Lane, Outcome] | oc.ItemError] = []
    for c in checked:
        if isinstance(c, oc.ItemError):
            out.append(c)
            continue
        lane, item = c
        outcome = (
            _by_request_id(lane, item, now)
            if item.request_id is not None or item.unit is None
            else _by_unit(lane, item, found[lane.name][item.unit], now)
        )
        if isinstance(outcome, oc.ItemError):
            out.append(outcome)
            continue
        out.append((lane, outcome))
        # [cuped] an item's further covariates: the same unit, stratum and report time
        out.extend((lane, dataclasses.replace(outcome, metric=m, value=v)) for m, v in item.more)
    return out


def _lane_of(router: Router, index: int, raw: Any, now: float) -> Lane | oc.ItemError:
    """The experiment an outcome item is for: named, the one a request id was issued by, or the only one."""
    named = raw.get("experiment") if isinstance(raw, dict) else None
    if named is not None:
        lane = router.lanes.by_name.get(named) if isinstance(named, str) else None
        if lane is None:
            return oc.ItemError(index, "experiment", f"unknown experiment {named!r}; served: {_names(router)}")
        return lane
    only = router.lanes.only
    if only is not None:
        return only
    request_id = raw.get("request_id") if isinstance(raw, dict) else None
    if isinstance(request_id, str):
        for lane in router.lanes:
            try:
                lane.ids.decode(request_id, now=now, ttl_s=lane.table.experiment.outcome_ttl_s)
            except RequestIdError:
                continue
            return lane
        return oc.ItemError(index, "request_id", "unknown request id: no experiment served here issued it")
    return oc.ItemError(
        index, "experiment", f"required for a unit's outcome when the router serves several: one of {_names(router)}"
    )


def _names(router: Router) -> str:
    return ", ".join(sorted(router.lanes.by_name)) or "(none)"


def _by_unit(lane: Lane, item: oc.OutcomeItem, stratum: tuple[int, str] | None, now: float) -> Outcome | oc.ItemError:
    if stratum is None:
        return oc.ItemError(
            item.index,
            "unit",
            f"unit {item.unit!r} has no exposure in this experiment (one "
            "through another replica is known after that replica's next flush; "
            "outcomes by request_id need no lookup)",
        )
    epoch, variant = stratum
    return Outcome(
        unit_hash=unit_hash(item.unit or ""),
        variant=variant,
        epoch=epoch,
        metric=item.metric,
        value=item.value,
        ts=now,
        event_id=item.event_id,
    )


def _by_request_id(lane: Lane, item: oc.OutcomeItem, now: float) -> Outcome | oc.ItemError:
    experiment = lane.table.experiment
    try:
        info = lane.ids.decode(item.request_id or "", now=now, ttl_s=experiment.outcome_ttl_s)
    except RequestIdError as exc:
        return oc.ItemError(item.index, "request_id", str(exc))
    if info.epoch == FORCED_EPOCH:
        return oc.ItemError(
            item.index, "request_id", "request was a QA override (X-AB-Force-Variant), not part of the experiment"
        )
    if info.variant_index >= len(experiment.variants):
        return oc.ItemError(item.index, "request_id", "unknown request id (variant no longer exists)")
    return Outcome(
        unit_hash=info.unit_hash,
        variant=experiment.variants[info.variant_index].name,
        epoch=info.epoch,
        metric=item.metric,
        value=item.value,
        ts=now,
        request_id=item.request_id,
        event_id=item.event_id,
        anonymous=info.anonymous,
    )


Handler = Callable[[Router, Request], Awaitable[Reply]]

#: name -> (method, handler)
ENDPOINTS: dict[str, tuple[str, Handler]] = {
    "healthz": ("GET", healthz),
    "readyz": ("GET", readyz),
    "metrics": ("GET", metrics),
    "experiment": ("GET", experiment),
    "outcomes": ("POST", outcomes),
}


def is_reserved(path: str) -> bool:
    """Whether a request path is one of ours (never forwarded)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


async def handle(router: Router, request: Request) -> Reply:
    """The reply of a reserved endpoint (JSON 404 and 405 included)."""
    found = ENDPOINTS.get(request.path[len(PREFIX) + 1 :]) if request.path.startswith(PREFIX + "/") else None
    if found is None:
        return error(
            404,
            "not_found",
            f"no endpoint {request.path}; reserved endpoints: "
            f"{PREFIX}/healthz, /readyz, /metrics, /experiment, POST /outcomes",
        )
    method, handler = found
    if request.method != method and not (method == "GET" and request.method == "HEAD"):
        return error(405, "method_not_allowed", f"{request.method} {request.path}: use {method}")
    return await handler(router, request)
