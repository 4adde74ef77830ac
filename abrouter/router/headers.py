"""Header handling for the proxy: pure functions over lists of (name, value) pairs.

Everything not hop-by-hop passes through unchanged in both directions, including
Content-Type (KServe parses the body by it), Content-Encoding (MLServer gzips large
responses; we forward the compressed bytes) and protocol headers such as
Inference-Header-Content-Length.
"""

from __future__ import annotations

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


def _connection_listed(headers: Iterable[tuple[str, str]]) -> set[str]:
    listed: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            listed.update(token.strip().lower() for token in value.split(",") if token.strip())
    return listed


def end_to_end(headers: Iterable[tuple[str, str]], *, drop: frozenset[str] = frozenset()) -> Headers:
    """The headers without hop-by-hop fields (and without any lower-cased name in `drop`)."""
    headers = list(headers)
    skip = HOP_BY_HOP | _connection_listed(headers) | drop
    return [(name, value) for name, value in headers if name.lower() not in skip]


def upstream_request_headers(
    headers: Iterable[tuple[str, str]], *, upstream: str, client_ip: str, scheme: str
) -> Headers:
    """Headers for the upstream leg: Host becomes the upstream's, X-Forwarded-* are added.

    Host is rewritten because model servers behind an ingress or Knative (KServe) route
    by it; the client's Host survives in X-Forwarded-Host. `traceparent` passes as is.
    """
    headers = list(headers)
    original_host = next((v for n, v in headers if n.lower() == "host"), "")
    prior_for = [v for n, v in headers if n.lower() == "x-forwarded-for"]
    # Expect: 100-continue was answered on the client leg; the body is already on its way.
    out = end_to_end(
        headers,
        drop=frozenset(
            {"host", "x-forwarded-for", "x-forwarded-proto", "expect", "x-forwarded-host", FORCE_HEADER.lower()}
        ),
    )
    out.append(("Host", urlsplit(upstream).netloc))
    out.append(("X-Forwarded-For", ", ".join([*prior_for, client_ip]) if prior_for else client_ip))
    out.append(("X-Forwarded-Proto", scheme))
    if original_host:
        out.append(("X-Forwarded-Host", original_host))
    return out


def tag_response(headers: Iterable[tuple[str, str]], *, experiment: str, variant: str, request_id: str) -> Headers:
    """Response headers for the client: upstream's end-to-end fields plus our three tags."""
    out = end_to_end(
        headers, drop=frozenset({EXPERIMENT_HEADER.lower(), VARIANT_HEADER.lower(), REQUEST_ID_HEADER.lower()})
    )
    out.append((EXPERIMENT_HEADER, experiment))
    out.append((VARIANT_HEADER, variant))
    out.append((REQUEST_ID_HEADER, request_id))
    return out
