"""gRPC status codes and metadata for the router. Pure: no grpc import, codes are their numbers.

What an exposure of a gRPC call records (`Exchange.received`): its ``status`` is the HTTP
status the call's gRPC code maps to (google.rpc.Code's documented mapping: OK 200,
NOT_FOUND 404, UNAVAILABLE 503, ...), so the metrics' status classes and the event log
mean the same for both protocols; the router's own failures keep the HTTP adapter's
statuses (502 unreachable, 504 deadline, 499 the client left). A code is an **error of the
variant** when it maps to a 5xx: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
UNAVAILABLE and DATA_LOSS, the server's failures; the client's (INVALID_ARGUMENT,
NOT_FOUND, RESOURCE_EXHAUSTED, CANCELLED, ...) are not, as an HTTP 4xx is not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote

from abrouter.router import headers as hdr
from abrouter.router.exchange import Failure, Problem

#: A cancel or DEADLINE_EXCEEDED this close to the call's deadline is the deadline's (the
#: upstream was too slow), not the caller's choice: gRPC clients reset the stream when their
#: own clock fires, which runs ahead of ours by the request's transit and our scheduling.
DEADLINE_SLACK_S: Final = 0.25

OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
ALREADY_EXISTS: Final = 6
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
FAILED_PRECONDITION: Final = 9
ABORTED: Final = 10
OUT_OF_RANGE: Final = 11
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
DATA_LOSS: Final = 15
UNAUTHENTICATED: Final = 16

#: google/rpc/code.proto: the HTTP status each code corresponds to.
HTTP_STATUS: Final = {
    OK: 200, CANCELLED: 499, UNKNOWN: 500, INVALID_ARGUMENT: 400, DEADLINE_EXCEEDED: 504, NOT_FOUND: 404,
    ALREADY_EXISTS: 409, PERMISSION_DENIED: 403, RESOURCE_EXHAUSTED: 429, FAILED_PRECONDITION: 400,
    ABORTED: 409, OUT_OF_RANGE: 400, UNIMPLEMENTED: 501, INTERNAL: 500, UNAVAILABLE: 503, DATA_LOSS: 500,
    UNAUTHENTICATED: 401,
}  # fmt: skip

#: How the stream driver's neutral failures are answered over gRPC.
CODE_OF_FAILURE: Final = {
    Failure.BAD_TARGET: INVALID_ARGUMENT,
    Failure.UNKNOWN_VARIANT: INVALID_ARGUMENT,
    Failure.UPSTREAM_TIMEOUT: DEADLINE_EXCEEDED,
    Failure.UPSTREAM_UNAVAILABLE: UNAVAILABLE,
    Failure.NO_EXPERIMENT: NOT_FOUND,
    Failure.INTERNAL: INTERNAL,
}

#: Never forwarded upstream, whichever server: the override (as over HTTP) and our own tags.
_OURS = frozenset(
    h.lower() for h in (hdr.FORCE_HEADER, hdr.EXPERIMENT_HEADER, hdr.VARIANT_HEADER, hdr.REQUEST_ID_HEADER)
)

#: Not forwarded upstream: ours, and what the gRPC library sets itself on the upstream call
#: (it refuses some of them).
_UPSTREAM_DROP = _OURS | frozenset(
    {
        "user-agent",
        "te",
        "content-type",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "x-forwarded-for",
    }
)

Metadata = list[tuple[str, str | bytes]]

#: Methods whose request and response are one message each by their published protos (the
#: Open Inference Protocol v2 and Triton's extensions of it, gRPC health's Check, TF
#: Serving's PredictionService): served by a unary handler and a unary upstream call, about
#: 1.5 times the calls per core of the stream-shaped path every other method takes (bench/README.md).
UNARY_METHODS: Final = frozenset(
    [
        f"/inference.GRPCInferenceService/{rpc}"
        for rpc in (
            "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
            "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
            "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
            "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
            "TraceSetting", "LogSettings",
        )
    ]
    + ["/grpc.health.v1.Health/Check"]
    + [
        f"/tensorflow.serving.PredictionService/{rpc}"
        for rpc in ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")
    ]
)  # fmt: skip


def http_status(code: int) -> int:
    """The HTTP status of a gRPC code (an unknown code is UNKNOWN's 500)."""
    return HTTP_STATUS.get(code, 500)


def is_error(code: int) -> bool:
    """Whether an upstream's answer with this code is an error of the variant (see the module docstring)."""
    return http_status(code) >= 500


def tags(problem_or_tags: Iterable[tuple[str, str]]) -> Metadata:
    """Response metadata from header pairs: gRPC metadata keys are lower case."""
    return [(name.lower(), value) for name, value in problem_or_tags]


def render(problem: Problem) -> tuple[int, str, Metadata]:
    """A failure of the router as gRPC: its code, details, and the tags for the initial metadata."""
    return CODE_OF_FAILURE[problem.failure], problem.message, tags(problem.headers)


def upstream_metadata(metadata: Iterable[tuple[str, str | bytes]], *, client_ip: str) -> Metadata:
    """The caller's metadata for the upstream call, with X-Forwarded-For (the caller's address) appended.

    Binary (``-bin``) values pass as bytes; what `_UPSTREAM_DROP` names is left out.
    """
    prior: list[str] = []
    out: Metadata = []
    for key, value in metadata:
        if key == "x-forwarded-for" and isinstance(value, str):
            prior.append(value)
        if key not in _UPSTREAM_DROP and not key.startswith(":"):
            out.append((key, value))
    if client_ip:
        out.append(("x-forwarded-for", ", ".join([*prior, client_ip])))
    elif prior:
        out.append(("x-forwarded-for", ", ".join(prior)))
    return out


def text_headers(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """The text (non-binary) metadata, as the exchange reads headers (unit id, override)."""
    return [(key, value) for key, value in metadata if isinstance(value, str)]


def peer_ip(peer: str) -> str:
    """The address of a gRPC peer string: ``ipv4:10.0.0.1:5000`` -> ``10.0.0.1``, ``ipv6:[::1]:5000`` -> ``::1``."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


# --- our own HTTP/2 path (abrouter.router.grpc.relay): headers as they are on the wire ---

#: Not forwarded upstream by our own HTTP/2 path: the override and our tags (as above), the
#: caller's deadline (the upstream call gets what is left of it), and HTTP/2's connection-specific
#: fields (RFC 9113 §8.2.2). Unlike grpc.aio's path, the message encoding headers pass as they are:
#: the messages do too.
H2_DROP: Final = _OURS | frozenset(
    {
        "te",
        "grpc-timeout",
        "x-forwarded-for",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_TIMEOUT_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
#: The HTTP status of a response without grpc-status, as gRPC clients read it (doc/http-grpc-status-mapping.md).
_CODE_OF_HTTP: Final = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                        429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}  # fmt: skip


def h2_tags(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response header fields from header pairs (HTTP/2 field names are lower case)."""
    return [(name.lower(), value) for name, value in pairs]


#: The tags' field names, lower case (`h2_tags` of the exchange's tags, made once: they go out on every call).
EXPERIMENT_FIELD: Final = hdr.EXPERIMENT_HEADER.lower()
VARIANT_FIELD: Final = hdr.VARIANT_HEADER.lower()
REQUEST_ID_FIELD: Final = hdr.REQUEST_ID_HEADER.lower()


def parse_timeout(value: str | None) -> float | None:
    """A ``grpc-timeout`` value in seconds (``100m`` -> 0.1), or None when absent or malformed."""
    if not value or len(value) > 9:
        return None
    digits = value[:-1]
    if not digits.isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(digits) * unit


def encode_timeout(seconds: float) -> str:
    """A ``grpc-timeout`` value for `seconds` (at most 8 digits, in the finest unit that fits)."""
    micros = max(1, math.ceil(seconds * 1e6))
    if micros < 100_000_000:
        return f"{micros}u"
    millis = math.ceil(micros / 1000)
    return f"{millis}m" if millis < 100_000_000 else f"{min(99_999_999, math.ceil(millis / 1000))}S"


def status_of(fields: Iterable[tuple[str, str]]) -> int:
    """The gRPC code of a response's last header list: its grpc-status, else what its HTTP status means."""
    http = 200
    for key, value in fields:
        if key == "grpc-status":
            return int(value) if value.isdigit() else UNKNOWN
        if key == ":status":
            http = int(value) if value.isdigit() else 0
    return _CODE_OF_HTTP.get(http, UNKNOWN)


def informational(fields: Iterable[tuple[str, str]]) -> bool:
    """Whether a response head is a 1xx one (RFC 9113 §8.1: any number may precede the final head)."""
    for key, value in fields:
        if key == ":status":
            return len(value) == 3 and value[0] == "1"
    return False


def percent_encode(message: str) -> str:
    """A status message as ``grpc-message`` carries it: UTF-8, percent-encoded outside printable ASCII and '%'."""
    if message.isascii() and message.isprintable() and "%" not in message:
        return message
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode("utf-8"))
