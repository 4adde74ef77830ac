"""The experiment model: one parser for YAML, dicts and (later) the custom resource spec.

Everything that reads an experiment (router, analyzer, CLI, CRD schema) goes through
`parse()` and gets frozen dataclasses back. Every rejection names the path of the bad
field, e.g. ``variants[1].weight: must be >= 0, got -5``. `to_dict()` is the inverse, so
a spec round-trips through JSON unchanged.

No I/O beyond reading a file in `load()`; no aiohttp, redis or kubernetes imports.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

MetricKind = Literal["binary", "continuous"]
Direction = Literal["increase", "decrease"]
UnitSourceKind = Literal["header", "cookie", "query"]

#: Metrics the router measures itself on every proxied request. They are per-request
#: (ratio) metrics: their unit-level sums are divided by the unit's exposures.
BUILTIN_METRICS = ("errors", "latency_ms")
WEIGHT_RESOLUTION = 10_000
#: Request ids carry the epoch in 32 bits.
MAX_EPOCH = 2**32 - 1
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(ValueError):
    """An experiment spec that cannot be used; `path` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class UnitSource:
    """Where the randomisation unit's id comes from on each request."""

    kind: UnitSourceKind
    name: str


@dataclass(frozen=True)
class Variant:
    name: str
    upstream: str
    weight: float  # as configured (relative); see Experiment.weights for the normalised split


@dataclass(frozen=True)
class Metric:
    name: str
    kind: MetricKind
    direction: Direction = "increase"


@dataclass(frozen=True)
class Guardrail:
    """Non-inferiority check of `metric` against the control, one-sided.

    `margin` is the largest tolerated harm: absolute in the metric's units, or a fraction
    of the control mean when `relative` is true (0.1 = 10% worse is still fine).
    """

    metric: str
    direction: Direction
    margin: float
    relative: bool = False


@dataclass(frozen=True)
class Bandit:
    """Thompson-sampling weights: weight = P(best), floored, after `min_units` per arm."""

    enabled: bool = False
    floor: float = 0.05
    min_units: int = 500


@dataclass(frozen=True)
class AnalysisSettings:
    """The decision policy. Times are in seconds, weights in percent of traffic."""

    alpha: float = 0.05
    min_units_per_arm: int = 500
    max_duration_s: float = 14 * 86400.0
    srm_alpha: float = 0.001
    #: mSPRT mixing variance is tuned to be most powerful around this many units per arm.
    expected_units_per_arm: int = 10_000
    guardrails: tuple[Guardrail, ...] = (
        Guardrail(metric="errors", direction="decrease", margin=0.01, relative=False),
        Guardrail(metric="latency_ms", direction="decrease", margin=0.2, relative=True),
    )
    #: Candidate weights (percent) the ramp steps through before promotion is allowed.
    ramp: tuple[float, ...] = (5.0, 25.0, 50.0)
    bandit: Bandit = field(default_factory=Bandit)


@dataclass(frozen=True)
class Timeouts:
    """Upstream timeouts in seconds; a connect failure answers 502, a timeout 504."""

    connect_s: float = 2.0
    read_s: float = 30.0


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    unit: UnitSource
    variants: tuple[Variant, ...]
    metrics: tuple[Metric, ...]
    #: The weights version. Every logged event records the epoch its unit was assigned
    #: under, so the analyzer can stratify by it. Changing the weights requires raising it
    #: (`with_weights` does); replicas reading the same spec then agree on the number.
    epoch: int = 1
    allow_force_variant: bool = False
    #: How long after a response its request id may still be credited with an outcome.
    outcome_ttl_s: float = 7 * 86400.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)

    @property
    def control(self) -> Variant:
        return self.variants[0]

    @property
    def weights(self) -> tuple[float, ...]:
        """Normalised weights, summing to 1, rounded to 1/WEIGHT_RESOLUTION steps."""
        return normalise([v.weight for v in self.variants])

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def with_weights(self, weights: Mapping[str, float]) -> Experiment:
        """A copy with new weights for the named variants (others unchanged), validated."""
        unknown = set(weights) - {v.name for v in self.variants}
        if unknown:
            raise ConfigError("weights", f"unknown variant(s) {sorted(unknown)}")
        variants = tuple(replace(v, weight=weights.get(v.name, v.weight)) for v in self.variants)
        return parse(to_dict(replace(self, variants=variants, epoch=self.epoch + 1)))


def normalise(weights: list[float] | tuple[float, ...]) -> tuple[float, ...]:
    total = sum(weights)
    return tuple(round(w / total * WEIGHT_RESOLUTION) / WEIGHT_RESOLUTION for w in weights)


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Walks a mapping, remembering the path so every error can name its field."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            what = "the experiment spec" if not path else ""
            raise ConfigError(path, f"{what} must be a mapping, got {_type(data)}".lstrip())
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = ..., *, required: bool = False) -> Any:
        self.seen.add(key)
        if key in self.data:
            return self.data[key]
        if required or default is ...:
            raise ConfigError(self.at(key), "is required")
        return default

    def done(self) -> None:
        extra = [str(k) for k in self.data if k not in self.seen]
        if extra:
            raise ConfigError(self.at(extra[0]), "unknown key" + _suggest(extra[0], self.seen))


def _suggest(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _str(value: Any, path: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"must be a non-empty string, got {_type(value)}")
    if pattern is not None and not pattern.match(value):
        raise ConfigError(path, f"must be {what}, got {value!r}")
    return value


def _number(
    value: Any, path: str, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"must be a number, got {_type(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer with hundreds of digits
        raise ConfigError(path, "must be finite, got a number too large for a float") from None
    if not math.isfinite(value):
        raise ConfigError(path, f"must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(path, f"must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ConfigError(path, f"must be <= {high:g}, got {value:g}")
    return value


def _int(value: Any, path: str, *, low: int = 0, high: int | None = None) -> int:
    number = _number(value, path, low=low, high=high)
    if number != int(number):
        raise ConfigError(path, f"must be an integer, got {value}")
    return int(number)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, got {_type(value)}")
    return value


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise ConfigError(path, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def parse_duration(value: Any, path: str) -> float:
    """Seconds from a number or a string like "90s", "15m", "12h", "14d"."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ConfigError(path, f"must be a duration like 30s, 15m, 12h or 14d, got {value!r}")
        return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    return _number(value, path, low=0, low_open=True)


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list, got {_type(value)}")
    return value


def _unit(data: Any, path: str) -> UnitSource:
    if not isinstance(data, Mapping) or len(data) != 1:
        raise ConfigError(path, "must be exactly one of {header: NAME}, {cookie: NAME}, {query: NAME}")
    ((kind, name),) = data.items()
    _choice(kind, path, ("header", "cookie", "query"))
    return UnitSource(kind=kind, name=_str(name, f"{path}.{kind}"))


def _upstream(value: Any, path: str) -> str:
    url = _str(value, path)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(path, f"is not a valid URL ({exc}): {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, f"must be an http(s) URL with a host, got {url!r}")
    if parts.query or parts.fragment or parts.username:
        raise ConfigError(path, f"must not carry credentials, a query or a fragment, got {url!r}")
    del port
    return url.rstrip("/")


def _variants(data: Any, path: str) -> tuple[Variant, ...]:
    items = _list(data, path)
    if len(items) < 2:
        raise ConfigError(path, f"needs two or more variants (the first is the control), got {len(items)}")
    variants = []
    for i, item in enumerate(items):
        r = _Reader(item, f"{path}[{i}]")
        variants.append(
            Variant(
                name=_str(
                    r.get("name", required=True), r.at("name"), _NAME, "a name of letters, digits, '-', '_' or '.'"
                ),
                upstream=_upstream(r.get("upstream", required=True), r.at("upstream")),
                weight=_number(r.get("weight", required=True), r.at("weight"), low=0),
            )
        )
        r.done()
    _unique([v.name for v in variants], path)
    if sum(v.weight for v in variants) <= 0:
        raise ConfigError(path, "weights are all zero; at least one variant needs a positive weight")
    return tuple(variants)


def _unique(names: list[str], path: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{path}[{i}].name", f"duplicate name {name!r}")
        seen.add(name)


def _metrics(data: Any, path: str) -> tuple[Metric, ...]:
    metrics = []
    for i, item in enumerate(_list(data, path)):
        r = _Reader(item, f"{path}[{i}]")
        name = _str(r.get("name", required=True), r.at("name"), _NAME, "a name of letters, digits, '-', '_' or '.'")
        if name in BUILTIN_METRICS:
            raise ConfigError(r.at("name"), f"{name!r} is measured by the router itself; pick another name")
        metrics.append(
            Metric(
                name=name,
                kind=_choice(r.get("kind", required=True), r.at("kind"), ("binary", "continuous")),
                direction=_choice(r.get("direction", "increase"), r.at("direction"), ("increase", "decrease")),
            )
        )
        r.done()
    _unique([m.name for m in metrics], path)
    return tuple(metrics)


def _guardrails(data: Any, path: str, metric_names: set[str]) -> tuple[Guardrail, ...]:
    rails = []
    for i, item in enumerate(_list(data, path)):
        r = _Reader(item, f"{path}[{i}]")
        metric = _str(r.get("metric", required=True), r.at("metric"))
        if metric not in metric_names:
            raise ConfigError(r.at("metric"), f"unknown metric {metric!r}; known: {', '.join(sorted(metric_names))}")
        rails.append(
            Guardrail(
                metric=metric,
                direction=_choice(r.get("direction", required=True), r.at("direction"), ("increase", "decrease")),
                margin=_number(r.get("margin", required=True), r.at("margin"), low=0),
                relative=_bool(r.get("relative", False), r.at("relative")),
            )
        )
        r.done()
    return tuple(rails)


def _analysis(data: Any, path: str, metric_names: set[str]) -> AnalysisSettings:
    d = AnalysisSettings()
    r = _Reader(data, path)
    ramp = tuple(
        _number(x, f"{r.at('ramp')}[{i}]", low=0, high=100, low_open=True)
        for i, x in enumerate(_list(r.get("ramp", list(d.ramp)), r.at("ramp")))
    )
    if list(ramp) != sorted(set(ramp)):
        raise ConfigError(r.at("ramp"), f"must be strictly increasing, got {list(ramp)}")
    b = _Reader(r.get("bandit", {}), r.at("bandit"))
    bandit = Bandit(
        enabled=_bool(b.get("enabled", d.bandit.enabled), b.at("enabled")),
        floor=_number(b.get("floor", d.bandit.floor), b.at("floor"), low=0, high=0.5),
        min_units=_int(b.get("min_units", d.bandit.min_units), b.at("min_units"), low=1),
    )
    b.done()
    guardrails = (
        _guardrails(r.get("guardrails"), r.at("guardrails"), metric_names) if "guardrails" in r.data else d.guardrails
    )
    r.seen.add("guardrails")
    settings = AnalysisSettings(
        alpha=_number(r.get("alpha", d.alpha), r.at("alpha"), low=0, high=0.5, low_open=True),
        min_units_per_arm=_int(r.get("min_units_per_arm", d.min_units_per_arm), r.at("min_units_per_arm"), low=2),
        max_duration_s=parse_duration(r.get("max_duration", d.max_duration_s), r.at("max_duration")),
        srm_alpha=_number(r.get("srm_alpha", d.srm_alpha), r.at("srm_alpha"), low=0, high=0.5, low_open=True),
        expected_units_per_arm=_int(
            r.get("expected_units_per_arm", d.expected_units_per_arm), r.at("expected_units_per_arm"), low=10
        ),
        guardrails=guardrails,
        ramp=ramp,
        bandit=bandit,
    )
    r.done()
    return settings


def parse(data: Any) -> Experiment:
    """Validate a spec (as loaded from YAML/JSON or a custom resource's spec)."""
    r = _Reader(data, "")
    name = _str(r.get("name", required=True), "name", _DNS_LABEL, "a DNS-1123 label (lowercase a-z, 0-9, '-')")
    variants = _variants(r.get("variants", required=True), "variants")
    metrics = _metrics(r.get("metrics", []), "metrics")
    metric_names = {m.name for m in metrics} | set(BUILTIN_METRICS)
    t = _Reader(r.get("timeouts", {}), "timeouts")
    timeouts = Timeouts(
        connect_s=parse_duration(t.get("connect", Timeouts.connect_s), t.at("connect")),
        read_s=parse_duration(t.get("read", Timeouts.read_s), t.at("read")),
    )
    t.done()
    experiment = Experiment(
        name=name,
        salt=_str(r.get("salt", name), "salt"),
        unit=_unit(r.get("unit", required=True), "unit"),
        variants=variants,
        metrics=metrics,
        epoch=_int(r.get("epoch", 1), "epoch", low=1, high=MAX_EPOCH),
        allow_force_variant=_bool(r.get("allow_force_variant", False), "allow_force_variant"),
        outcome_ttl_s=parse_duration(r.get("outcome_ttl", Experiment.outcome_ttl_s), "outcome_ttl"),
        timeouts=timeouts,
        analysis=_analysis(r.get("analysis", {}), "analysis", metric_names),
    )
    r.done()
    return experiment


def loads(text: str, source: str = "<string>") -> Experiment:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    return parse(data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line: the problem and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load(path: str | Path) -> Experiment:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror or exc}") from None
    return loads(text, str(path))


# ------------------------------------------------------------------- serialising


def to_dict(e: Experiment) -> dict[str, Any]:
    """The canonical spec as plain JSON types; `parse(to_dict(e)) == e`."""
    a = e.analysis
    return {
        "name": e.name,
        "salt": e.salt,
        "unit": {e.unit.kind: e.unit.name},
        "variants": [{"name": v.name, "upstream": v.upstream, "weight": v.weight} for v in e.variants],
        "metrics": [{"name": m.name, "kind": m.kind, "direction": m.direction} for m in e.metrics],
        "epoch": e.epoch,
        "allow_force_variant": e.allow_force_variant,
        "outcome_ttl": e.outcome_ttl_s,
        "timeouts": {"connect": e.timeouts.connect_s, "read": e.timeouts.read_s},
        "analysis": {
            "alpha": a.alpha,
            "min_units_per_arm": a.min_units_per_arm,
            "max_duration": a.max_duration_s,
            "srm_alpha": a.srm_alpha,
            "expected_units_per_arm": a.expected_units_per_arm,
            "guardrails": [
                {"metric": g.metric, "direction": g.direction, "margin": g.margin, "relative": g.relative}
                for g in a.guardrails
            ],
            "ramp": list(a.ramp),
            "bandit": {"enabled": a.bandit.enabled, "floor": a.bandit.floor, "min_units": a.bandit.min_units},
        },
    }


def to_json(e: Experiment) -> str:
    return json.dumps(to_dict(e), sort_keys=True)
