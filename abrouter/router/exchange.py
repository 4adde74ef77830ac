"""One proxied request, apart from any HTTP framework: the seam every server adapter calls.

An adapter (the aiohttp handler in `abrouter.router.http.proxy` today; a protocol-level
server and a gRPC listener next) parses the request into an `Incoming` and then:

1. ``ex = Exchange.start(services, incoming, now=...)``: the unit id, the assignment, the
   request id and the tags. A request the exchange refuses (an unknown forced variant)
   raises `Refused`, which carries the `Reply` to send; nothing is recorded for it.
2. sends ``ex.upstream_headers()`` to ``ex.variant.upstream`` with its own transport;
3. ``ex.received(status)`` once the upstream answered, and ``ex.response_headers(...)``
   for the client; or ``ex.failed(error)`` for a `Reply` (502/504 JSON) when it did not;
   ``ex.aborted()`` when the upstream failed mid-body, ``ex.crashed()`` on a bug,
   ``ex.incomplete()`` when the client's request body never arrived whole;
4. ``ex.finish(now=...)`` in a ``finally``: the metrics and the exposure record.

No framework, no Redis: recording an exposure is a synchronous call into the event log's
in-memory batch (`ExposureLog`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from abrouter.contract.keys import unit_hash
from abrouter.router import exposures
from abrouter.router import headers as hdr
from abrouter.router.errors import UpstreamError, UpstreamTimeout
from abrouter.router.eventlog.events import Exposure
from abrouter.router.metrics import ProxyMetrics
from abrouter.router.requestid import RequestIds
from abrouter.router.routing import RoutingTable

log = logging.getLogger("abrouter.proxy")

COOKIE_MAX_AGE_S = 365 * 86400
#: Status logged when the client disconnected before the upstream answered; not an error
#: of the variant (nginx's 499).
CLIENT_CLOSED = 499
#: Epoch 0 in a request id marks a QA override, which is not part of the experiment.
FORCED_EPOCH = 0


class ExposureLog(Protocol):
    def record_exposure(self, e: Exposure) -> None: ...


class Services(Protocol):
    """What an exchange needs of the running router (`abrouter.router.state.Router`)."""

    table: RoutingTable
    ids: RequestIds
    metrics: ProxyMetrics
    rng: random.Random

    @property
    def eventlog(self) -> ExposureLog: ...


@dataclass(frozen=True, slots=True)
class Incoming:
    """A parsed request as the adapter received it."""

    method: str
    #: The request target in origin form: raw path and query, as sent.
    target: str
    #: Raw header fields in order, decoded as latin-1 (bytes preserved one to one).
    headers: Sequence[tuple[str, str]]
    #: The client's address, for X-Forwarded-For.
    peer: str
    #: "http" or "https", for X-Forwarded-Proto.
    scheme: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A response the router makes itself: a JSON body, its status and headers."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]
    content_type: str = "application/json"


class Refused(Exception):
    """The exchange refuses the request before assigning it; send `reply`. Not a bug."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.body.decode())
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Assignment:
    index: int
    unit_hash: str
    forced: bool
    new_cookie: str | None = None
    #: No unit id: the request is its own unit (Redis keeps no unit state for it).
    anonymous: bool = False


def json_body(code: str, message: str, **extra: str) -> bytes:
    # The Open Inference Protocol shape: `error` is the readable text (clients print it).
    return json.dumps({"error": message, "code": code, **extra}).encode()


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of a header, decoded as the client most likely meant it (UTF-8)."""
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value.encode("latin-1").decode("utf-8", "surrogateescape")
    return None


def cookie(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """A cookie's value from the Cookie header (RFC 6265 pairs; quotes around a value dropped)."""
    found = None
    for pair in (header(headers, "Cookie") or "").split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            found = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    return found


def origin_form(target: str) -> str | None:
    """The path and query of a request target, or None when it names no path.

    An absolute-form target (``GET http://elsewhere/x``) is cut to its origin form: only
    the configured upstream's scheme and authority are ever used, so a client cannot
    steer the upstream leg to another host (or port) with it.
    """
    if target.startswith("/"):
        return target
    try:
        parts = urlsplit(target)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def query_param(target: str, name: str) -> str | None:
    for key, value in parse_qsl(urlsplit(target).query, keep_blank_values=True):
        if key == name:
            return value
    return None


def unit_of(incoming: Incoming, table: RoutingTable) -> str | None:
    source = table.experiment.unit
    if source.kind == "header":
        value = header(incoming.headers, source.name)
    elif source.kind == "cookie":
        value = cookie(incoming.headers, source.name)
    else:
        value = query_param(incoming.target, source.name)
    return value or None


def assign(incoming: Incoming, table: RoutingTable, rng: random.Random) -> Assignment:
    """Which variant serves this request, and as which unit. Raises `Refused` for a bad override."""
    forced = header(incoming.headers, hdr.FORCE_HEADER)
    if forced and table.experiment.allow_force_variant:
        if forced not in table.index:
            known = ", ".join(table.index)
            message = f"{hdr.FORCE_HEADER}: unknown variant {forced!r}; known: {known}"
            raise Refused(Reply(400, json_body("unknown_variant", message), []))
        return Assignment(table.index[forced], _random_unit(rng), forced=True)
    unit = unit_of(incoming, table)
    new_cookie = None
    if unit is None and table.experiment.unit.kind == "cookie":
        unit = new_cookie = uuid.uuid4().hex
    if unit is None:  # no id: an independent random draw, and the request is its own unit
        return Assignment(table.assigner.assign_random(rng), _random_unit(rng), forced=False, anonymous=True)
    return Assignment(table.assigner.assign(unit), unit_hash(unit), forced=False, new_cookie=new_cookie)


def _random_unit(rng: random.Random) -> str:
    """A unit hash for a request that is its own unit (no id given)."""
    return f"{rng.getrandbits(64):016x}"


class Exchange:
    """One request from assignment to its event record; see the module docstring."""

    __slots__ = (
        "_services",
        "choice",
        "complete",
        "error",
        "incoming",
        "request_id",
        "started",
        "status",
        "table",
        "variant",
    )

    def __init__(self, services: Services, incoming: Incoming, table: RoutingTable, choice: Assignment,
                 request_id: str, started: float) -> None:  # fmt: skip
        self._services = services
        self.incoming = incoming
        self.table = table  # one consistent snapshot for the whole request
        self.choice = choice
        self.variant = table.experiment.variants[choice.index]
        self.request_id = request_id
        self.started = started
        # No response yet: if the client goes away first, this is what gets logged.
        self.status = CLIENT_CLOSED
        self.error: str | None = None
        self.complete = True

    @classmethod
    def start(cls, services: Services, incoming: Incoming, *, now: float) -> Exchange:
        started = time.perf_counter()
        target = origin_form(incoming.target)
        if target is None:
            message = f"request target {incoming.target[:100]!r}: send a path (origin form), e.g. /predict"
            raise Refused(Reply(400, json_body("bad_target", message), []))
        if target != incoming.target:
            incoming = dataclasses.replace(incoming, target=target)
        table = services.table
        choice = assign(incoming, table, services.rng)
        request_id = services.ids.issue(
            unit_hash=choice.unit_hash,
            epoch=FORCED_EPOCH if choice.forced else table.epoch,
            variant_index=choice.index,
            now=now,
            anonymous=choice.anonymous,
        )
        return cls(services, incoming, table, choice, request_id, started)

    @property
    def tags(self) -> dict[str, str]:
        return {"experiment": self.table.experiment.name, "variant": self.variant.name, "request_id": self.request_id}

    def upstream_headers(self) -> list[tuple[str, str]]:
        return hdr.upstream_request_headers(
            self.incoming.headers,
            upstream=self.variant.upstream,
            client_ip=self.incoming.peer,
            scheme=self.incoming.scheme,
        )

    def received(self, status: int) -> None:
        """The upstream answered with `status` (whatever happens to the body later)."""
        self.status = status

    def response_headers(self, upstream_headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The upstream's end-to-end headers plus the tags (and the new unit cookie, if any)."""
        return hdr.tag_response(upstream_headers, **self.tags) + self._new_cookie()

    def failed(self, exc: UpstreamError) -> Reply:
        """No response from the upstream: 504 on a timeout, else 502; an error of the variant."""
        self.error = "timeout" if isinstance(exc, UpstreamTimeout) else "unavailable"
        self.status = 504 if self.error == "timeout" else 502
        name = self.variant.name
        log.warning("variant %s: upstream %s: %s", name, self.error, exc)
        # The details (upstream URL, DNS results) go to the log only, never to the client.
        body = json_body(f"upstream_{self.error}", f"variant {name!r}: upstream {self.error}", variant=name)
        return Reply(self.status, body, hdr.tag_response([], **self.tags) + self._new_cookie())

    def aborted(self) -> None:
        """The upstream failed after the response headers went out."""
        self.error = "stream_aborted"

    def incomplete(self) -> None:
        """The client's request never arrived whole (it stalled and was cut, or hung up mid-body).

        The upstream never saw a whole request: neither an exposure nor an error of the variant.
        """
        self.complete = False

    def crashed(self) -> None:
        """A bug while handling the request; the adapter answers 500."""
        self.status, self.error = 500, "internal"

    def finish(self, *, now: float) -> None:
        """Count the request and, unless it was a QA override, record the exposure."""
        if not self.complete:
            return
        seconds = time.perf_counter() - self.started
        services = self._services
        services.metrics.observe_request(self.variant.name, self.status, seconds, self.error)
        if self.choice.forced:
            return  # QA overrides are not exposures of the experiment
        if not exposures.is_exposure(self.incoming.method, self.incoming.target, self.table.experiment.exposures):
            return  # health and metadata calls are forwarded, not analysed (issue 9)
        services.eventlog.record_exposure(
            Exposure(
                request_id=self.request_id,
                unit_hash=self.choice.unit_hash,
                variant=self.variant.name,
                epoch=self.table.epoch,
                ts=now,
                status=self.status,
                latency_ms=seconds * 1000.0,
                error=self.error is not None or self.status >= 500,
                anonymous=self.choice.anonymous,
            )
        )

    def _new_cookie(self) -> list[tuple[str, str]]:
        """Set-Cookie for a unit id the router just made up, so the client's next request sticks."""
        if self.choice.new_cookie is None:
            return []
        name = self.table.experiment.unit.name
        value = f"{name}={self.choice.new_cookie}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Lax"
        return [("Set-Cookie", value)]
