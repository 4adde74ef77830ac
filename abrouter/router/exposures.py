"""Which proxied requests are exposures of the experiment: a pure decision.

Only predictions should count. Clients of the Open Inference Protocol (KServe, Triton,
MLServer) also call health and metadata endpoints (``is_server_ready``,
``is_model_ready``, model metadata), often without a user id: logged as exposures they
added units that never convert and diluted every metric. Such requests are still
forwarded; they are just not logged (`Exchange.finish`).

A spec's ``exposures`` rules (method and path glob) list the requests that count; with
none, every request counts except `OIP_NOT_EXPOSURES`. No I/O, no framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from abrouter.contract.model import ExposureRule

#: The Open Inference Protocol (v2) endpoints that are not predictions: server health
#: (/v2/health/live, /v2/health/ready), server metadata (GET /v2), and model metadata and
#: readiness (GET /v2/models/<m>[/versions/<v>][/ready]). Inference is a POST. Over gRPC,
#: the protocol's health and metadata RPCs, ``grpc.health.v1`` and reflection.
OIP_NOT_EXPOSURES: tuple[ExposureRule, ...] = (
    ExposureRule(method="*", path="/v2/health/*"),
    ExposureRule(method="GET", path="/v2"),
    ExposureRule(method="GET", path="/v2/"),
    ExposureRule(method="GET", path="/v2/models/*"),
    ExposureRule(method="HEAD", path="/v2"),
    ExposureRule(method="HEAD", path="/v2/models/*"),
    # Over gRPC (a call's target is its method path): the same health and metadata calls of
    # inference.GRPCInferenceService, the standard health service and server reflection.
    *(
        ExposureRule(method="POST", path=f"/inference.GRPCInferenceService/{rpc}")
        for rpc in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata")
    ),
    ExposureRule(method="POST", path="/grpc.health.v1.Health/*"),
    ExposureRule(method="POST", path="/grpc.reflection.*"),
)


def is_exposure(method: str, target: str, rules: Sequence[ExposureRule]) -> bool:
    """Whether a request (its method and origin-form target) is an exposure under `rules`, decided afresh
    (per request, a routing table's `Decider` keeps its decisions)."""
    return _decide(method, target.split("?", 1)[0], rules)


#: The most decisions a `Decider` keeps: a few distinct paths, on every request.
_DECIDED_MAX = 4096


class Decider:
    """`is_exposure` under one spec's rules (`abrouter.router.routing.RoutingTable.exposures`), its decisions kept
    by method, then path: two lookups of strings per request, no key tuple."""

    __slots__ = ("_decided", "_size", "rules")

    def __init__(self, rules: Sequence[ExposureRule]) -> None:
        self.rules = tuple(rules)
        self._decided: dict[str, dict[str, bool]] = {}
        self._size = 0

    def decide(self, method: str, target: str) -> bool:
        """Whether a request (its method and origin-form target) is an exposure under `rules`."""
        by_path = self._decided.get(method)
        if by_path is None:
            by_path = self._decided[method] = {}
        cut = target.find("?")
        path = target if cut < 0 else target[:cut]
        known = by_path.get(path)
        if known is None:
            known = _decide(method, path, self.rules)
            if self._size >= _DECIDED_MAX:  # bounded: a client cannot grow it with made-up paths (or methods)
                self._decided.clear()
                self._size = 0
                by_path = self._decided[method] = {}
            by_path[path] = known
            self._size += 1
        return known


def _decide(method: str, path: str, rules: Sequence[ExposureRule]) -> bool:
    if rules:
        return any(_matches(rule, method, path) for rule in rules)
    return not any(_matches(rule, method, path) for rule in OIP_NOT_EXPOSURES)


def _matches(rule: ExposureRule, method: str, path: str) -> bool:
    return (rule.method == "*" or rule.method == method.upper()) and fnmatchcase(path, rule.path)
