"""One proxied request, apart from any protocol: what the stream driver asks of it.

The stream driver (`abrouter.router.stream`) calls it for every server adapter:

1. ``ex = Exchange.start(services, incoming, now=..., body=...)``: the experiment the
   request belongs to (`abrouter.router.matching`; `body` when the adapter holds it whole,
   for a JSON body's model name), the unit id, the assignment, the request id and the
   tags, and the variant's own model name where the request named one (``ex.incoming``'s
   target, or ``ex.body``). A request the exchange refuses (a target with no path, no
   experiment, an unknown forced variant) raises `Refused`, which carries the `Problem`;
   nothing is recorded for it.
2. the driver sends ``ex.upstream_headers()`` (and ``ex.body`` when set) to
   ``ex.variant.upstream`` through ``ex.lane.transport``;
3. ``ex.received(status)`` once the upstream answered, ``ex.response_headers(...)`` for
   the client and ``ex.first_byte()`` when its head went out; or ``ex.failed(error)`` for
   the `Problem` to render when it did not; ``ex.aborted()`` when the upstream failed
   mid-body, ``ex.client_gone()`` when the client left before the end of the response,
   ``ex.crashed()`` on a bug, ``ex.incomplete()`` when the client's request body never
   arrived whole;
4. ``ex.finish(now=...)`` in a ``finally``: the metrics and the exposure record.

Failures are neutral (`Failure`): each wire adapter renders them (HTTP: a status and
the Open Inference Protocol's JSON error; gRPC: a status code and details). No
framework, no Redis: recording an exposure is a synchronous call into the event log's
in-memory batch (`ExposureLog`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import parse_qsl, urlsplit

from abrouter.contract.keys import unit_hash
from abrouter.router import headers as hdr
from abrouter.router.errors import UpstreamError, UpstreamTimeout
from abrouter.router.eventlog.events import Exposure
from abrouter.router.matching import ModelAt, renamed
from abrouter.router.metrics import ProxyMetrics
from abrouter.router.requestid import RequestIds
from abrouter.router.routing import Arm, RoutingTable
from abrouter.router.upstream.transport import Transport

log = logging.getLogger("abrouter.proxy")

COOKIE_MAX_AGE_S: Final = 365 * 86400
#: Status logged when the client disconnected before the upstream answered; not an error
#: of the variant (nginx's 499).
CLIENT_CLOSED: Final = 499
#: Epoch 0 in a request id marks a QA override, which is not part of the experiment.
FORCED_EPOCH: Final = 0


class ExposureLog(Protocol):
    def record_exposure(self, e: Exposure) -> None: ...


class Experimenting(Protocol):
    """One experiment the router serves (`abrouter.router.state.Lane`)."""

    table: RoutingTable
    ids: RequestIds
    transport: Transport

    @property
    def eventlog(self) -> ExposureLog: ...


class Routes(Protocol):
    """The experiments served (`abrouter.router.state.Lanes`)."""

    def route(
        self, incoming: Incoming, body: bytes | None, model: ModelAt | None = None
    ) -> tuple[Experimenting, ModelAt | None] | None: ...


class Services(Protocol):
    """What an exchange needs of the running router (`abrouter.router.state.Router`)."""

    metrics: ProxyMetrics
    rng: random.Random

    @property
    def lanes(self) -> Routes: ...


@dataclass(slots=True, init=False)
class Incoming:
    """A parsed request as the adapter received it (treated as immutable; not frozen, as a
    frozen dataclass costs a microsecond per request to build)."""

    method: str
    #: The request target in origin form: raw path and query, as sent.
    target: str
    #: Raw header fields in order, decoded as latin-1 (bytes preserved one to one).
    headers: Sequence[tuple[str, str]]
    #: The client's address, for X-Forwarded-For.
    peer: str
    #: "http" or "https", for X-Forwarded-Proto.
    scheme: str

    # Written out, not generated: compiled, a direct call (a generated __init__ is called with an args tuple and a
    # keyword dict, some hundreds of nanoseconds per request).
    def __init__(self, method: str, target: str, headers: Sequence[tuple[str, str]], peer: str, scheme: str) -> None:
        self.method, self.target, self.headers, self.peer, self.scheme = method, target, headers, peer, scheme


class Failure(enum.Enum):
    """Why the router answers a request itself; each adapter renders it (see `http.render`)."""

    #: The request target names no path (the client's mistake).
    BAD_TARGET = "bad_target"
    #: X-AB-Force-Variant names no variant (the client's mistake).
    UNKNOWN_VARIANT = "unknown_variant"
    #: The variant's upstream gave no response in time: an error of the variant.
    UPSTREAM_TIMEOUT = "upstream_timeout"
    #: The variant's upstream refused, reset or closed: an error of the variant.
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    #: No experiment's match takes the request (the client's mistake, or a missing experiment).
    NO_EXPERIMENT = "no_experiment"
    #: A bug in the router.
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Problem:
    """A failure to render: what, in words, and the headers it carries (tags, a new cookie)."""

    failure: Failure
    message: str
    variant: str | None = None
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class Refused(Exception):
    """The exchange refuses the request before assigning it; render `problem`. Not a bug."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


@dataclass(slots=True, init=False)
class Assignment:
    """Which variant, as which unit (treated as immutable; not frozen, as `Incoming`: a frozen
    dataclass costs most of a microsecond per request to build)."""

    index: int
    unit_hash: str
    forced: bool
    new_cookie: str | None
    #: No unit id: the request is its own unit (Redis keeps no unit state for it).
    anonymous: bool

    def __init__(  # written out, as `Incoming`'s
        self, index: int, unit_hash: str, forced: bool, new_cookie: str | None = None, anonymous: bool = False
    ) -> None:
        self.index, self.unit_hash, self.forced, self.new_cookie, self.anonymous = (
            index, unit_hash, forced, new_cookie, anonymous
        )  # fmt: skip


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of a header, decoded as the client most likely meant it (UTF-8)."""
    lname = name.lower()
    size = len(lname)
    for key, value in headers:  # lengths first: most names differ in length, and len() makes no new string
        if len(key) == size and (key == lname or key.lower() == lname):  # HTTP/2's names are lower case already
            # ASCII reads the same either way: only other bytes need decoding again.
            return value if value.isascii() else value.encode("latin-1").decode("utf-8", "surrogateescape")
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
    kind, name = table.unit_kind, table.unit_name  # the spec's `unit`
    if kind == "header":
        value = header(incoming.headers, name)
    elif kind == "cookie":
        value = cookie(incoming.headers, name)
    else:
        value = query_param(incoming.target, name)
    return value or None


def assign(incoming: Incoming, table: RoutingTable, rng: random.Random) -> Assignment:
    """Which variant serves this request, and as which unit. Raises `Refused` for a bad override."""
    forced = header(incoming.headers, hdr.FORCE_HEADER) if table.allow_force_variant else None
    if forced:
        if forced not in table.index:
            known = ", ".join(table.index)
            message = f"{hdr.FORCE_HEADER}: unknown variant {forced!r}; known: {known}"
            raise Refused(Problem(Failure.UNKNOWN_VARIANT, message))
        return Assignment(table.index[forced], _random_unit(rng), forced=True)
    unit = unit_of(incoming, table)
    new_cookie = None
    if unit is None and table.unit_kind == "cookie":
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
        "arm",
        "body",
        "choice",
        "complete",
        "error",
        "first_byte_s",
        "incoming",
        "lane",
        "model_at",
        "request",
        "request_id",
        "started",
        "status",
        "table",
        "upstream_failed",
        "variant",
    )

    def __init__(self, services: Services, lane: Experimenting, incoming: Incoming, table: RoutingTable,
                 choice: Assignment, request_id: str, started: float) -> None:  # fmt: skip
        self._services = services
        self.lane = lane
        #: The request as the client sent it (origin form), before the variant's model name.
        self.request = incoming
        #: Where the request names its model, if it does (`abrouter.router.matching`).
        self.model_at: ModelAt | None = None
        self.incoming = incoming
        #: The request body to forward when the exchange rewrote it (a variant's model name), else None.
        self.body: bytes | None = None
        self.table = table  # one consistent snapshot for the whole request
        self.choice = choice
        #: What the variant's requests share (`routing.Arm`): its tags as fields, its metric series.
        self.arm: Arm = table.arms[choice.index]
        self.variant = self.arm.variant
        self.request_id = request_id
        self.started = started
        # No response yet: if the client goes away first, this is what gets logged.
        self.status = CLIENT_CLOSED
        self.error: str | None = None
        #: The upstream answered, with a response its protocol counts as a failure (HTTP: 5xx).
        self.upstream_failed = False
        self.complete = True
        self.first_byte_s: float | None = None

    @classmethod
    def start(
        cls, services: Services, incoming: Incoming, *, now: float, body: bytes | None = None,
        model_at: ModelAt | None = None,
    ) -> Exchange:  # fmt: skip
        """`body`: the request body when the adapter holds it whole (a JSON body's model is read from it);
        `model_at`: the model name the adapter read itself (a gRPC ModelInferRequest's)."""
        started = time.perf_counter()
        target = origin_form(incoming.target)
        if target is None:
            message = f"request target {incoming.target[:100]!r}: send a path (origin form), e.g. /predict"
            raise Refused(Problem(Failure.BAD_TARGET, message))
        if target != incoming.target:
            incoming = dataclasses.replace(incoming, target=target)
        found = services.lanes.route(incoming, body, model_at)
        if found is None:
            services.metrics.no_experiment += 1
            path = incoming.target.partition("?")[0][:200]
            raise Refused(Problem(Failure.NO_EXPERIMENT, f"no experiment serves {incoming.method} {path}"))
        lane, model_at = found
        table = lane.table
        choice = assign(incoming, table, services.rng)
        request_id = lane.ids.issue(
            unit_hash=choice.unit_hash,
            epoch=FORCED_EPOCH if choice.forced else table.epoch,
            variant_index=choice.index,
            now=now,
            anonymous=choice.anonymous,
        )
        ex = Exchange(services, lane, incoming, table, choice, request_id, started)  # not cls: compiled, a direct call
        if model_at is not None:
            ex.model_at = model_at
            target, ex.body = renamed(incoming.target, body, model_at, ex.arm.model)  # the variant's own name
            if target != incoming.target:
                ex.incoming = dataclasses.replace(incoming, target=target)
        return ex

    @property
    def tags(self) -> dict[str, str]:
        return {"experiment": self.table.experiment.name, "variant": self.variant.name, "request_id": self.request_id}

    def upstream_headers(self) -> list[tuple[str, str]]:
        headers = hdr.upstream_request_headers(
            self.incoming.headers,
            upstream=self.variant.upstream,
            client_ip=self.incoming.peer,
            scheme=self.incoming.scheme,
        )
        if self.body is not None:  # rewritten: its length is the transport's to state
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        return headers

    def received(self, status: int, *, failed: bool | None = None) -> None:
        """The upstream answered with `status` (whatever happens to the body later).

        `failed`: whether that answer is an error of the variant; by default HTTP's rule, >= 500.
        """
        self.status = status
        self.upstream_failed = status >= 500 if failed is None else failed

    def first_byte(self) -> None:
        """The response's head went out to the client (its time to first byte)."""
        if self.first_byte_s is None:
            self.first_byte_s = time.perf_counter() - self.started

    def response_headers(self, upstream_headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The upstream's end-to-end headers plus the tags (and the new unit cookie, if any)."""
        out = hdr.tag_response(
            upstream_headers,
            experiment=self.table.experiment.name,
            variant=self.variant.name,
            request_id=self.request_id,
        )
        if self.choice.new_cookie is not None:
            out += self._new_cookie()
        return out

    def failed(self, exc: UpstreamError) -> Problem:
        """No response from the upstream: an error of the variant (logged as 504 on a timeout, else 502)."""
        timeout = isinstance(exc, UpstreamTimeout)
        self.error = "timeout" if timeout else "unavailable"
        self.status = 504 if timeout else 502
        name = self.variant.name
        log.warning("variant %s: upstream %s: %s", name, self.error, exc)
        # The details (upstream URL, DNS results) go to the log only, never to the client.
        return Problem(
            Failure.UPSTREAM_TIMEOUT if timeout else Failure.UPSTREAM_UNAVAILABLE,
            f"variant {name!r}: upstream {self.error}",
            variant=name,
            headers=hdr.tag_response([], **self.tags) + self._new_cookie(),
        )

    def problem(self, failure: Failure, message: str) -> Problem:
        """A `Problem` of this exchange, carrying its tags."""
        return Problem(failure, message, variant=self.variant.name, headers=hdr.tag_response([], **self.tags))

    def aborted(self) -> None:
        """The upstream failed after the response headers went out."""
        self.error = "stream_aborted"

    def incomplete(self) -> None:
        """The client's request never arrived whole (it stalled and was cut, or hung up mid-body).

        The upstream never saw a whole request: neither an exposure nor an error of the variant.
        """
        self.complete = False

    def client_gone(self) -> None:
        """The client left before the end of the response: logged as 499, not an error of the variant."""
        if self.error is None:
            self.status = CLIENT_CLOSED
            self.upstream_failed = False

    def crashed(self) -> None:
        """A bug while handling the request; the adapter answers 500."""
        self.status, self.error = 500, "internal"

    def finish(self, *, now: float) -> None:
        """Count the request and, unless it was a QA override, record the exposure."""
        if not self.complete:
            return
        seconds = time.perf_counter() - self.started
        failed = self.error is not None or self.upstream_failed
        table, arm = self.table, self.arm
        metrics = self._services.metrics
        series = arm.series
        if series is None or series.metrics is not metrics:  # the arm's series, bound once per table
            series = arm.series = metrics.arm(table.experiment.name, arm.name)
        series.observe(self.status, seconds, self.error, failed, self.first_byte_s)
        if self.choice.forced:
            return  # QA overrides are not exposures of the experiment
        if not table.exposures.decide(self.incoming.method, self.incoming.target):
            return  # health and metadata calls are forwarded, not analysed (issue 9)
        self.lane.eventlog.record_exposure(
            Exposure(
                request_id=self.request_id,
                unit_hash=self.choice.unit_hash,
                variant=arm.name,
                epoch=table.epoch,
                ts=now,
                status=self.status,
                latency_ms=seconds * 1000.0,
                error=failed,
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
