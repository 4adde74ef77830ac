"""Header handling for the proxy: pure functions over lists of (name, value) pairs.

Everything not hop-by-hop passes through unchanged in both directions, including
Content-Type (KServe parses the body by it), Content-Encoding (MLServer gzips large
responses; we forward the compressed bytes) and protocol headers such as
Inference-Header-Content-Length.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from urllib.parse import urlsplit

#: RFC 9110 §7.6.1 names Connection and the fields it lists; these are the usual ones,
#: plus Proxy-Connection, which old clients still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
    }
)

EXPERIMENT_HEADER = "X-AB-Experiment"
VARIANT_HEADER = "X-AB-Variant"
REQUEST_ID_HEADER = "X-AB-Request-Id"
FORCE_HEADER = "X-AB-Force-Variant"

Headers = list[tuple[str, str]]


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}


@functools.lru_cache(maxsize=64)
def _skip(drop: frozenset[str]) -> frozenset[str]:
    return HOP_BY_HOP | drop


def end_to_end(headers: Iterable[tuple[str, str]], *, drop: frozenset[str] = frozenset()) -> Headers:
    """The headers without hop-by-hop fields (and without any lower-cased name in `drop`).

    One pass; the fields a Connection header lists are removed in a second one, only when
    there is such a header (rare on the hot path).
    """
    skip = _skip(drop)
    out: Headers = []
    listed: set[str] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in skip:
            if lname == "connection":
                listed = _tokens(value) if listed is None else listed | _tokens(value)
            continue
        out.append((name, value))
    if listed:
        out = [(name, value) for name, value in out if name.lower() not in listed]
    return out


_UPSTREAM_DROP = frozenset(
    {"host", "x-forwarded-for", "x-forwarded-proto", "expect", "x-forwarded-host", FORCE_HEADER.lower()}
)
_TAG_DROP = frozenset({EXPERIMENT_HEADER.lower(), VARIANT_HEADER.lower(), REQUEST_ID_HEADER.lower()})


@functools.lru_cache(maxsize=256)
def authority(url: str) -> str:
    """The host[:port] of an upstream URL (cached: a handful of upstreams, every request)."""
    return urlsplit(url).netloc


def upstream_request_headers(
    headers: Iterable[tuple[str, str]], *, upstream: str, client_ip: str, scheme: str
) -> Headers:
    """Headers for the upstream leg: Host becomes the upstream's, X-Forwarded-* are added.

    Host is rewritten because model servers behind an ingress or Knative (KServe) route
    by it; the client's Host survives in X-Forwarded-Host. `traceparent` passes as is.
    Expect: 100-continue was answered on the client leg; the body is already on its way.
    """
    headers = headers if isinstance(headers, list) else list(headers)
    original_host = ""
    prior_for: list[str] = []
    for name, value in headers:
        size = len(name)
        if size == 4 and name.lower() == "host":
            original_host = original_host or value
        elif size == 15 and name.lower() == "x-forwarded-for":
            prior_for.append(value)
    out = end_to_end(headers, drop=_UPSTREAM_DROP)
    out.append(("Host", authority(upstream)))
    out.append(("X-Forwarded-For", ", ".join([*prior_for, client_ip]) if prior_for else client_ip))
    out.append(("X-Forwarded-Proto", scheme))
    if original_host:
        out.append(("X-Forwarded-Host", original_host))
    return out


def tag_response(headers: Iterable[tuple[str, str]], *, experiment: str, variant: str, request_id: str) -> Headers:
    """Response headers for the client: upstream's end-to-end fields plus our three tags."""
    out = end_to_end(headers, drop=_TAG_DROP)
    out.append((EXPERIMENT_HEADER, experiment))
    out.append((VARIANT_HEADER, variant))
    out.append((REQUEST_ID_HEADER, request_id))
    return out
