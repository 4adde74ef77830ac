"""The reserved endpoints under ``/abrouter/``: health, readiness, metrics, the running
experiment, and the outcome API. Every error here is JSON naming the problem."""

from __future__ import annotations

import hmac
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from abrouter.contract import experiment as model
from abrouter.contract.keys import unit_hash
from abrouter.router import metrics as prom
from abrouter.router import outcomes as oc
from abrouter.router.connections import ConnectionGuard
from abrouter.router.errors import BatchError, EventLogUnavailable, RequestIdError
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.eventlog.events import Outcome
from abrouter.router.exchange import FORCED_EPOCH
from abrouter.router.http import listener
from abrouter.router.http.proxy import ROUTER
from abrouter.router.state import Router

PREFIX = "/abrouter"
#: The bearer token of the outcome and admin endpoints (empty: none configured).
API_TOKEN = web.AppKey("api_token", bytes)


def _json(status: int, payload: dict[str, Any], **headers: str) -> web.Response:
    return web.json_response(payload, status=status, headers=headers or None)


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    # The Open Inference Protocol shape: `error` is the readable text (clients print it).
    return _json(status, {"error": message, "code": code, **extra})


async def healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while predictions can flow; a Redis outage only degrades it (events spill)."""
    router = request.app[ROUTER]
    stats = router.eventlog.stats
    if isinstance(router.eventlog, DisabledEventLog):
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
    return _json(200, body)


async def metrics(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    s = router.eventlog.stats
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
        "abrouter_redis_up": ("gauge", "1 while the last flush reached Redis.", 1.0 if s.redis_up else 0.0),
        "abrouter_weights_epoch": ("gauge", "The weights epoch being served.", router.table.epoch),
    }
    guard = request.app.get(listener.CONNECTIONS)
    if guard is not None:
        extra.update(_connection_metrics(guard))
    text = prom.render(router.metrics, experiment=router.table.experiment.name, extra=extra)
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-store"})


def _connection_metrics(guard: ConnectionGuard) -> dict[str, tuple[str, str, float]]:
    return {
        "abrouter_connections_open": ("gauge", "Client connections open now.", guard.open),
        "abrouter_connections_refused_total": (
            "counter",
            "Client connections closed at once because the connection cap was reached.",
            guard.refused,
        ),
        **{
            f"abrouter_client_{phase.value}_timeouts_total": (
                "counter",
                f"Client connections closed by the {phase.value} deadline.",
                n,
            )
            for phase, n in guard.timeouts.items()
        },
    }


def _authorized(request: web.Request) -> bool:
    """Whether the request carries the configured bearer token (False when none is configured)."""
    token = request.app.get(API_TOKEN, b"")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


def _unauthorized(request: web.Request) -> web.Response | None:
    """A 401 when a token is configured and the request lacks it; None when it may proceed."""
    if not request.app.get(API_TOKEN, b"") or _authorized(request):
        return None
    return _json(
        401,
        {"error": "this endpoint needs Authorization: Bearer <ABROUTER_API_TOKEN>", "code": "unauthorized"},
        **{"WWW-Authenticate": 'Bearer realm="abrouter"'},
    )


def _public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec without what predicts assignment (the salt) or locates the models (upstreams)."""
    out = {k: v for k, v in spec.items() if k != "salt"}
    out["variants"] = [{k: v for k, v in variant.items() if k != "upstream"} for variant in spec["variants"]]
    return out


async def experiment(request: web.Request) -> web.Response:
    denied = _unauthorized(request)
    if denied is not None:
        return denied
    router = request.app[ROUTER]
    table = router.table
    spec = model.to_dict(table.experiment)
    return _json(
        200,
        {
            # Salt and upstream URLs only to a holder of the token.
            "spec": spec if _authorized(request) else _public_spec(spec),
            "weights": table.weights_by_name(),
            "epoch": table.epoch,
            "epoch_since": table.since,
            "reload_error": router.source.last_error,
        },
    )


class _BadEncoding(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _inflate(request: web.Request, body: bytes) -> bytes:
    """The body, inflated when the client compressed it (the server leaves bodies as sent).

    Bounded like an uncompressed body (`web.Application.client_max_size`): a gzip bomb is
    a 413 after at most that many bytes of output.
    """
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate", "x-gzip"):
        raise _BadEncoding(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: use gzip, deflate or none")
    limit = request.app._client_max_size
    inflater = zlib.decompressobj(wbits=47)  # 47: gzip or zlib, detected from the header
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _BadEncoding(400, "invalid_body", f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise _BadEncoding(
            413, "too_large", f"inflated body exceeds {limit} bytes; send at most {oc.MAX_BATCH} outcomes"
        )
    return out


async def outcomes(request: web.Request) -> web.Response:
    denied = _unauthorized(request)
    if denied is not None:
        return denied
    router = request.app[ROUTER]
    try:
        raw_items = oc.items_of(json.loads(_inflate(request, await request.read())))
    except _BadEncoding as exc:
        return error(exc.status, exc.code, str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return error(413, "too_large", f"body too large ({exc.text}); send at most {oc.MAX_BATCH} outcomes")
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
    for o in resolved:
        if not router.eventlog.record_outcome(o):  # type: ignore[arg-type]
            repeated += 1  # its event_id is already waiting in this batch
            continue
        router.metrics.outcomes[o.metric] += 1  # type: ignore[union-attr]
        counts[o.metric] = counts.get(o.metric, 0) + 1  # type: ignore[union-attr]
    return _json(202, {"accepted": len(resolved), "by_metric": counts, "repeated": repeated})


async def _resolve(router: Router, raw_items: list[Any]) -> list[Outcome | oc.ItemError]:
    table = router.table
    checked = [oc.validate_item(i, raw, table.experiment) for i, raw in enumerate(raw_items)]
    units = {c.unit for c in checked if isinstance(c, oc.OutcomeItem) and c.unit is not None}
    hashes = {u: unit_hash(u) for u in units}
    strata = await router.eventlog.lookup_units(list(hashes.values())) if hashes else {}
    found = {u: strata[h] for u, h in hashes.items()}
    now = time.time()
    out: list[Outcome | oc.ItemError] = []
    for c in checked:
        if isinstance(c, oc.ItemError):
            out.append(c)
        elif c.request_id is not None or c.unit is None:
            out.append(_by_request_id(router, c, now))
        elif (stratum := found[c.unit]) is None:
            out.append(
                oc.ItemError(
                    c.index,
                    "unit",
                    f"unit {c.unit!r} has no exposure in this experiment (one "
                    "through another replica is known after that replica's next flush; "
                    "outcomes by request_id need no lookup)",
                )
            )
        else:
            epoch, variant = stratum
            out.append(
                Outcome(
                    unit_hash=hashes[c.unit],
                    variant=variant,
                    epoch=epoch,
                    metric=c.metric,
                    value=c.value,
                    ts=now,
                    event_id=c.event_id,
                )
            )
    return out


def _by_request_id(router: Router, item: oc.OutcomeItem, now: float) -> Outcome | oc.ItemError:
    experiment = router.table.experiment
    try:
        info = router.ids.decode(item.request_id or "", now=now, ttl_s=experiment.outcome_ttl_s)
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


async def not_found(request: web.Request) -> web.Response:
    return error(
        404,
        "not_found",
        f"no endpoint {request.path}; reserved endpoints: "
        f"{PREFIX}/healthz, /readyz, /metrics, /experiment, POST /outcomes",
    )


def _method_not_allowed(allowed: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return error(405, "method_not_allowed", f"{request.method} {request.path}: use {allowed}")

    return handler


def add_routes(app: web.Application) -> None:
    endpoints = (
        ("GET", "healthz", healthz),
        ("GET", "readyz", readyz),
        ("GET", "metrics", metrics),
        ("GET", "experiment", experiment),
        ("POST", "outcomes", outcomes),
    )
    for method, name, handler in endpoints:
        app.router.add_route(method, f"{PREFIX}/{name}", handler)
        # Same resource, any other method: a JSON 405 instead of aiohttp's text one.
        app.router.add_route("*", f"{PREFIX}/{name}", _method_not_allowed(method))
    app.router.add_route("*", PREFIX + "/{tail:.*}", not_found)
