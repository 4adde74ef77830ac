"""In-process Prometheus metrics of the data plane. Pure: counters plus a text renderer.

Counting is a few dict operations per request; rendering happens only on scrape.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar

#: Latency buckets in seconds (Prometheus convention), tuned for model inference.
BUCKETS_S: Final[tuple[float, ...]] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        i = 0  # bisect.bisect_left(BUCKETS_S, seconds), walked: most observations fall in the first few buckets
        for bound in BUCKETS_S:
            if not bound < seconds:  # as bisect's test: NaN counts in bucket 0
                break
            i += 1
        self.counts[i] += 1
        self.total += seconds
        self.n += 1


#: The status class labels ("0xx".."9xx"), made once rather than formatted per request.
_CLASSES = tuple(f"{cls}xx" for cls in range(10))

#: (experiment, variant): the key of every per-arm series.
Arm = tuple[str, str]


class ArmSeries:
    """One arm's series of a `ProxyMetrics`, looked up once (`ProxyMetrics.arm`) rather than per request: its
    histograms (the very objects of ``latency[arm]`` and ``first_byte[arm]``) and its keys of ``requests``."""

    __slots__ = ("experiment", "first_byte", "keys", "latency", "metrics", "variant")

    def __init__(self, metrics: ProxyMetrics, experiment: str, variant: str) -> None:
        self.metrics, self.experiment, self.variant = metrics, experiment, variant
        arm = (experiment, variant)
        self.latency: _Histogram = metrics.latency[arm]
        self.first_byte: _Histogram | None = None  # made on the first response head: none for an arm never answered
        #: The ``requests`` key of each status class, made once.
        self.keys = tuple((experiment, variant, cls) for cls in _CLASSES)

    def observe(self, status: int, seconds: float, error: str | None, failed: bool, first_byte_s: float | None) -> None:
        """`ProxyMetrics.observe_request` of this arm."""
        metrics = self.metrics
        cls = status // 100
        key = self.keys[cls] if 0 <= cls < 10 else (self.experiment, self.variant, f"{cls}xx")
        requests = metrics.requests
        requests[key] = requests.get(key, 0) + 1
        self.latency.observe(seconds)
        if first_byte_s is not None:
            first = self.first_byte
            if first is None:
                first = self.first_byte = metrics.first_byte[(self.experiment, self.variant)]
            first.observe(first_byte_s)
        if failed:
            metrics.errors[(self.experiment, self.variant, error or "upstream_5xx")] += 1


@dataclass
class ProxyMetrics:
    #: (experiment, variant, status class) -> requests.
    requests: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: (experiment, variant, reason) -> errors of the variant.
    errors: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[Arm, _Histogram] = field(default_factory=lambda: defaultdict(_Histogram))
    #: Time to the response's head, for streamed and whole responses alike.
    first_byte: dict[Arm, _Histogram] = field(default_factory=lambda: defaultdict(_Histogram))
    #: (experiment, metric) -> accepted outcomes.
    outcomes: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    outcomes_rejected: int = 0
    #: Requests refused at the wire (malformed, over a limit, HTTP/2 on the HTTP/1.1 port), by reason.
    bad_requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: Requests no experiment's match took (answered 404 ``no_experiment``).
    no_experiment: int = 0
    #: [shadow] Copies per (shadow variant, result): sent, failed (no response or a 5xx),
    #: agreed (status and body equal to the control's); and copies never sent, by reason.
    #: Keyed (experiment, shadow variant, result) and (experiment, reason).
    shadow: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    shadow_dropped: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: gRPC calls the upstream refused unprocessed and the router sent again, by arm.
    grpc_retries: dict[Arm, int] = field(default_factory=lambda: defaultdict(int))
    #: experiment -> variant -> its `ArmSeries` (`arm`).
    _arms: dict[str, dict[str, ArmSeries]] = field(default_factory=dict, repr=False, compare=False)

    def arm(self, experiment: str, variant: str) -> ArmSeries:
        """The series of one arm, made on first use (two lookups of strings, no key tuple per request)."""
        variants = self._arms.get(experiment)
        if variants is None:
            variants = self._arms[experiment] = {}
        series = variants.get(variant)
        if series is None:
            series = variants[variant] = ArmSeries(self, experiment, variant)
        return series

    def observe_request(
        self,
        experiment: str,
        variant: str,
        status: int,
        seconds: float,
        error: str | None,
        *,
        failed: bool | None = None,
        first_byte_s: float | None = None,
    ) -> None:
        """`error` is None for a response from the upstream, else a reason (e.g. "timeout").

        `failed`: an error of the variant (default: `error` set or an HTTP 5xx).
        """
        if failed is None:
            failed = error is not None or status >= 500
        self.arm(experiment, variant).observe(status, seconds, error, failed, first_byte_s)


def _sample(value: float) -> str:
    """Every digit: `:g` would print epoch 20250101 as 2.02501e+07."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_Key = TypeVar("_Key", bound=tuple[str, ...])


def _counter(name: str, help_text: str, series: Mapping[_Key, int], *names: str) -> list[str]:
    """A counter's HELP and TYPE, then a sample per key of `series`, its parts labelled by `names`."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for key, n in sorted(series.items()):
        lines.append(f"{name}{_labels(**dict(zip(names, key)))} {n}")
    return lines


def _histograms(name: str, by_arm: dict[Arm, _Histogram]) -> list[str]:
    lines = []
    for (experiment, variant), h in sorted(by_arm.items()):
        cumulative = 0
        for bound, count in zip((*BUCKETS_S, float("inf")), h.counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f"{name}_bucket{_labels(experiment=experiment, variant=variant, le=le)} {cumulative}")
        base = _labels(experiment=experiment, variant=variant)
        lines.append(f"{name}_sum{base} {h.total:.6f}")
        lines.append(f"{name}_count{base} {h.n}")
    return lines


def render(m: ProxyMetrics, *, labels: dict[str, str], extra: dict[str, tuple[str, str, float]]) -> str:
    """Prometheus text format 0.0.4. `extra` maps a metric name to (type, help, value); the
    router-wide series carry `labels` (the experiment's name when the router serves one)."""
    lines = _counter(
        "abrouter_requests_total",
        "Proxied requests by variant and status class.",
        m.requests,
        "experiment",
        "variant",
        "code",
    )
    lines += _counter(
        "abrouter_errors_total",
        "Failed requests by variant and reason (5xx, refused, timeout).",
        m.errors,
        "experiment",
        "variant",
        "reason",
    )
    lines += [
        "# HELP abrouter_request_duration_seconds Time from request to end of response body.",
        "# TYPE abrouter_request_duration_seconds histogram",
    ]
    lines += _histograms("abrouter_request_duration_seconds", m.latency)
    lines += [
        "# HELP abrouter_response_first_byte_seconds Time from request to the response's head going out.",
        "# TYPE abrouter_response_first_byte_seconds histogram",
    ]
    lines += _histograms("abrouter_response_first_byte_seconds", m.first_byte)
    lines += _counter("abrouter_outcomes_total", "Accepted outcomes by metric.", m.outcomes, "experiment", "metric")
    lines += [
        "# HELP abrouter_outcomes_rejected_total Outcome items rejected as invalid.",
        "# TYPE abrouter_outcomes_rejected_total counter",
        f"abrouter_outcomes_rejected_total{_labels(**labels)} {m.outcomes_rejected}",
        "# HELP abrouter_no_experiment_total Requests no experiment's match took (answered 404 no_experiment).",
        "# TYPE abrouter_no_experiment_total counter",
        f"abrouter_no_experiment_total{_labels(**labels)} {m.no_experiment}",
    ]
    lines += [
        "# HELP abrouter_bad_requests_total Requests refused before they reached a variant, by reason "
        "(malformed, over a limit, HTTP/2 on the HTTP/1.1 port); never counted as a variant's error.",
        "# TYPE abrouter_bad_requests_total counter",
    ]
    for reason, n in sorted(m.bad_requests.items()):
        lines.append(f"abrouter_bad_requests_total{_labels(**labels, reason=reason)} {n}")
    lines += _counter(
        "abrouter_grpc_retries_total",
        "gRPC calls the upstream refused unprocessed (REFUSED_STREAM, or above its GOAWAY's last stream id) and "
        "the router sent again; never counted as a variant's error.",
        m.grpc_retries,
        "experiment",
        "variant",
    )
    lines += _shadow_lines(m)
    for name, (kind, help_text, value) in extra.items():
        lines += [
            f"# HELP {name} {help_text}",
            f"# TYPE {name} {kind}",
            f"{name}{_labels(**labels)} {_sample(value)}",
        ]
    return "\n".join(lines) + "\n"


# [shadow]
_SHADOW_HELP = {
    "sent": "Copies of the control's requests sent to a shadow variant.",
    "failed": "Copies a shadow variant answered with a 5xx or not at all.",
    "agreed": "Copies a shadow variant answered with the control's status and body.",
}


def _shadow_lines(m: ProxyMetrics) -> list[str]:
    """``abrouter_shadow_{sent,failed,agreed}_total{variant}`` and ``abrouter_shadow_dropped_total{reason}``."""
    lines = []
    for result, help_text in _SHADOW_HELP.items():
        name = f"abrouter_shadow_{result}_total"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for (experiment, variant, r), n in sorted(m.shadow.items()):
            if r == result:
                lines.append(f"{name}{_labels(experiment=experiment, variant=variant)} {n}")
    return lines + _counter(
        "abrouter_shadow_dropped_total",
        "Copies never sent: the queue was full (queue_full), the request body streamed (streamed_body), or the "
        "router stopped first (closing).",
        m.shadow_dropped,
        "experiment",
        "reason",
    )
