"""One parser for an experiment spec, from YAML, a dict or a custom resource's spec.

Everything that reads an experiment (router, analyzer, CLI, CRD schema) goes through
`parse()` and gets the frozen dataclasses of `abrouter.contract.model` back (re-exported
here). Every rejection is a `ConfigError` naming the path of the bad field, e.g.
``variants[1].weight: must be >= 0, got -5``. `to_dict()` is the inverse, so a spec
round-trips through JSON unchanged.

No I/O beyond reading a file in `load()`; no aiohttp, redis or kubernetes imports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import yaml

from abrouter.contract import fields
from abrouter.contract.fields import ConfigError
from abrouter.contract.model import (
    BUILTIN_METRICS,
    EXPOSURES,
    MAX_EPOCH,
    SLOW_REQUESTS,
    WEIGHT_RESOLUTION,
    AnalysisSettings,
    Bandit,
    Direction,
    Experiment,
    ExposureRule,
    Guardrail,
    Match,
    Metric,
    MetricKind,
    SecondaryCorrection,
    Timeouts,
    UnitSource,
    UnitSourceKind,
    Variant,
    normalise,
)

# Serialising lives in serialise.py; callers know these as the spec's own (re-exported).
from abrouter.contract.serialise import to_dict as to_dict
from abrouter.contract.serialise import to_json as to_json

__all__ = [
    "BUILTIN_METRICS",
    "EXPOSURES",
    "MAX_EPOCH",
    "SLOW_REQUESTS",
    "WEIGHT_RESOLUTION",
    "AnalysisSettings",
    "Bandit",
    "ConfigError",
    "Direction",
    "Experiment",
    "ExposureRule",
    "Guardrail",
    "Match",
    "Metric",
    "MetricKind",
    "Timeouts",
    "UnitSource",
    "UnitSourceKind",
    "Variant",
    "load",
    "loads",
    "normalise",
    "parse",
    "parse_duration",
    "to_dict",
    "to_json",
    "with_weights",
]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
#: The smallest bandit floor: every arm keeps at least 0.5% of traffic.
MIN_BANDIT_FLOOR = 0.005
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: The host of a `Variant.grpc_upstream`: a DNS name or IPv4 address, or an IPv6 one in brackets.
_GRPC_HOST = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$")
parse_duration = fields.duration


def with_weights(experiment: Experiment, weights: Mapping[str, float]) -> Experiment:
    """A copy with new weights for the named variants (others unchanged) and the next epoch, validated."""
    unknown = set(weights) - {v.name for v in experiment.variants}
    if unknown:
        raise ConfigError("weights", f"unknown variant(s) {sorted(unknown)}")
    variants = tuple(_weighted(v, weights.get(v.name, v.weight)) for v in experiment.variants)
    return parse(to_dict(replace(experiment, variants=variants, epoch=experiment.epoch + 1)))


def _weighted(v: Variant, weight: float) -> Variant:
    """`v` with `weight`; [shadow] a shadow given a positive weight becomes a live variant."""
    if v.shadow and weight > 0:
        return replace(v, weight=weight, shadow=False, shadow_percent=100.0)
    return replace(v, weight=weight)


# --------------------------------------------------------------------------- parsing


def _unit(data: Any, path: str) -> UnitSource:
    if not isinstance(data, Mapping) or len(data) != 1:
        raise ConfigError(path, "must be exactly one of {header: NAME}, {cookie: NAME}, {query: NAME}")
    ((kind, name),) = data.items()
    fields.choice(kind, path, ("header", "cookie", "query"))
    return UnitSource(kind=kind, name=fields.string(name, f"{path}.{kind}"))


def _upstream(value: Any, path: str) -> str:
    url = fields.string(value, path)
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
    items = fields.list_of(data, path)
    if len(items) < 2:
        raise ConfigError(path, f"needs two or more variants (the first is the control), got {len(items)}")
    if len(items) > MAX_VARIANTS:  # a request id holds the variant's index in one byte
        raise ConfigError(path, f"at most {MAX_VARIANTS} variants, got {len(items)}")
    variants = []
    for i, item in enumerate(items):
        r = fields.Reader(item, f"{path}[{i}]")
        variants.append(
            Variant(
                name=fields.string(
                    r.get("name", required=True), r.at("name"), _NAME, "a name of letters, digits, '-', '_' or '.'"
                ),
                upstream=_upstream(r.get("upstream", required=True), r.at("upstream")),
                weight=fields.number(r.get("weight", required=True), r.at("weight"), low=0),
                deployment=_deployment(r.get("deployment", None), r.at("deployment")),
                model=_model_name(r.get("model", None), r.at("model")),
                **_shadow(r, first=i == 0),  # [shadow]
                grpc_upstream=_grpc_upstream(r.get("grpc_upstream", None), r.at("grpc_upstream")),
            )
        )
        r.done()
    _unique([v.name for v in variants], path)
    if sum(v.weight for v in variants) <= 0:
        raise ConfigError(path, "weights are all zero; at least one variant needs a positive weight")
    return tuple(variants)


#: A model name as the Open Inference Protocol, KServe and OpenAI-compatible servers take
#: it: no whitespace, quotes or backslashes; a '/' (``org/model``) only matches in a body.
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,254}$"
_MODEL = re.compile(MODEL_PATTERN)


def _model_name(value: Any, path: str) -> str | None:
    if value is None:
        return None
    return fields.string(value, path, _MODEL, "a model name of letters, digits and '_.:/@+-'")


def _match(data: Any, path: str) -> Match:
    r = fields.Reader(data, path)
    pattern = r.get("path", None)
    if pattern is not None:
        pattern = fields.string(pattern, r.at("path"))
        if not pattern.startswith("/"):
            raise ConfigError(r.at("path"), f"must start with '/', got {pattern!r}")
    host = r.get("host", None)
    if host is not None:
        host = fields.string(host, r.at("host"), _DNS_SUBDOMAIN, "a host name in lowercase, without a port")
    headers = fields.mapping(r.get("headers", {}), r.at("headers"))
    pairs = []
    for key, value in headers.items():
        where = f"{r.at('headers')}.{key}"
        name = fields.string(key, where, _HEADER_NAME, "a header name (letters, digits, '-')")
        pairs.append((name.lower(), fields.string(value, where)))
    match = Match(
        model=_model_name(r.get("model", None), r.at("model")),
        path=pattern,
        host=host,
        headers=tuple(sorted(pairs)),
    )
    r.done()
    return match


_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")


# [shadow]
def _shadow(r: fields.Reader, *, first: bool) -> dict[str, Any]:
    """``shadow`` and ``shadow_percent`` of a variant: the control is live, a shadow has weight 0."""
    shadow = fields.boolean(r.get("shadow", False), r.at("shadow"))
    if not shadow:
        if "shadow_percent" in r.data:
            raise ConfigError(r.at("shadow_percent"), "only a shadow (shadow: true) takes shadow_percent")
        return {}
    if first:
        raise ConfigError(
            r.at("shadow"), "the first variant is the control, which answers clients: it cannot be a shadow"
        )
    weight = r.data.get("weight")
    if weight != 0:
        raise ConfigError(
            r.at("weight"),
            f"a shadow is never assigned: its weight must be 0, got {weight!r} (shadow: false makes it a live variant)",
        )
    percent = fields.number(r.get("shadow_percent", 100), r.at("shadow_percent"), low=0, high=100)
    return {"shadow": True, "shadow_percent": float(percent)}


# [/shadow]


def _grpc_upstream(value: Any, path: str) -> str | None:
    """A gRPC endpoint as ``host:port``: a DNS name, an IPv4 address or a bracketed IPv6 one, and a port."""
    if value is None:
        return None
    address = fields.string(value, path)
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not host or not _GRPC_HOST.match(host):
        raise ConfigError(path, f"must be HOST:PORT (no scheme), e.g. recsys-v2.models:8001, got {address!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(path, f"port must be 1-65535, got {port!r} in {address!r}")
    return address


def _deployment(value: Any, path: str) -> str | None:
    if value is None:
        return None
    return fields.string(value, path, _DNS_SUBDOMAIN, "a Deployment name (lowercase a-z, 0-9, '-', '.')")


def _unique(names: list[str], path: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{path}[{i}].name", f"duplicate name {name!r}")
        seen.add(name)


def _metrics(data: Any, path: str) -> tuple[Metric, ...]:
    metrics = []
    for i, item in enumerate(fields.list_of(data, path)):
        r = fields.Reader(item, f"{path}[{i}]")
        name = fields.string(
            r.get("name", required=True), r.at("name"), _NAME, "a name of letters, digits, '-', '_' or '.'"
        )
        if name in BUILTIN_METRICS or name == EXPOSURES:
            raise ConfigError(r.at("name"), f"{name!r} is measured by the router itself; pick another name")
        kind = fields.choice(r.get("kind", required=True), r.at("kind"), ("binary", "continuous", "ratio"))
        numerator = denominator = None
        if kind == "ratio":
            numerator = fields.string(r.get("numerator", required=True), r.at("numerator"))
            denominator = fields.string(r.get("denominator", EXPOSURES), r.at("denominator"))
        metrics.append(
            Metric(
                name=name,
                kind=kind,
                direction=fields.choice(r.get("direction", "increase"), r.at("direction"), ("increase", "decrease")),
                numerator=numerator,
                denominator=denominator,
                cuped=_cuped(r, kind),  # [cuped]
                cap=_cap(r, kind),  # [cap]
            )
        )
        r.done()
    _unique([m.name for m in metrics], path)
    for i, m in enumerate(metrics):
        if m.is_ratio:
            _ratio_parts(m, f"{path}[{i}]", metrics)
    return tuple(metrics)


# [cuped]
def _cuped(r: fields.Reader, kind: str) -> bool:
    """Whether the experiment's covariate adjusts the metric: by default every binary or continuous
    one; a ratio when it says ``cuped: true`` (its parts must be adjusted, built-ins or the
    exposures, `_cuped_ratios`)."""
    return fields.boolean(r.get("cuped", kind != "ratio"), r.at("cuped"))


def _cuped_ratios(metrics: tuple[Metric, ...], covariate: str | None) -> None:
    """A ratio with ``cuped: true`` needs the covariate and Σx·c, Σy·c of both its parts.

    The router keeps Σx_u·c_u for the binary and continuous metrics the covariate adjusts
    and for the built-ins such a ratio names (`keys.covariate_pairs`); the exposures'
    Σn_u·c_u is the covariate column's ``sum_xn``. A part with ``cuped: false`` has none.
    """
    for i, m in enumerate(metrics):
        if not (m.is_ratio and m.cuped):
            continue
        path = f"metrics[{i}].cuped"
        if covariate is None:
            raise ConfigError(path, "needs the experiment's covariate: add `covariates: [<name>]` or drop cuped")
        for part, name in (("numerator", m.numerator), ("denominator", m.denominator)):
            _cuped_part(metrics, path, part, name or "")


def _cuped_part(metrics: tuple[Metric, ...], path: str, part: str, name: str) -> None:
    if name == EXPOSURES or name in BUILTIN_METRICS:
        return  # counted by the router: their products with the covariate are kept (`_cuped_ratios`)
    if not next(x for x in metrics if x.name == name).cuped:
        raise ConfigError(
            path,
            f"the {part} {name!r} has cuped: false; a ratio is adjusted through its parts' products with the "
            "covariate, so both must be adjusted",
        )


#: [cuped] At most this many covariates: the router keeps k·m + k(k−1)/2 cross products per
#: stratum for m adjusted metrics, and a regression on many covariates needs many units.
MAX_COVARIATES = 8


def _covariates(one: Any, several: Any, metric_names: set[str]) -> tuple[str, ...]:
    """``covariate: a`` (one) or ``covariates: [a, b, ...]`` (any), not both."""
    if one is not None and several is not None:
        raise ConfigError("covariates", "give covariate (one) or covariates (a list), not both")
    if one is not None:
        return (_covariate_name(one, "covariate", metric_names),)
    if several is None:
        return ()
    names = fields.list_of(several, "covariates")
    if not 1 <= len(names) <= MAX_COVARIATES:
        raise ConfigError("covariates", f"must list 1 to {MAX_COVARIATES} names, got {len(names)}")
    out = tuple(_covariate_name(v, f"covariates[{i}]", metric_names) for i, v in enumerate(names))
    for i, name in enumerate(out):
        if name in out[:i]:
            raise ConfigError(f"covariates[{i}]", f"{name!r} is listed twice")
    return out


def _covariate_name(value: Any, path: str, metric_names: set[str]) -> str:
    name = fields.string(value, path, _NAME, "a name of letters, digits, '-', '_' or '.'")
    if name in metric_names or name == EXPOSURES:
        # Its per-unit sums live in the same columns as the metrics' (`keys.metric_order`).
        raise ConfigError(path, f"{name!r} is already a metric's name; pick another")
    return name


# [/cuped]


# [cap]
#: The largest cap: the bound of every outcome value (`keys.MAX_ABS_VALUE`).
MAX_CAP = 1e15


def _cap(r: fields.Reader, kind: str) -> float | None:
    value = r.get("cap", None)
    if value is None:
        return None
    if kind != "continuous":
        raise ConfigError(r.at("cap"), f"only continuous metrics take a cap, not {kind} ones")
    return fields.number(value, r.at("cap"), low=0, high=MAX_CAP, low_open=True)


# [/cap]


def _ratio_parts(m: Metric, path: str, metrics: list[Metric]) -> None:
    """A ratio's parts are metrics with per-unit sums: not ratios, not itself, not equal."""
    summed = [x.name for x in metrics if not x.is_ratio]
    for part, name, allowed in (
        ("numerator", m.numerator, [*summed, *BUILTIN_METRICS]),
        ("denominator", m.denominator, [*summed, *BUILTIN_METRICS, EXPOSURES]),
    ):
        if name not in allowed:
            raise ConfigError(
                f"{path}.{part}", f"must name a binary or continuous metric, got {name!r}; known: {', '.join(allowed)}"
            )
    if m.numerator == m.denominator:
        raise ConfigError(f"{path}.denominator", f"must differ from the numerator, got {m.denominator!r} for both")


def _guardrails(data: Any, path: str, metric_names: set[str]) -> tuple[Guardrail, ...]:
    rails = []
    for i, item in enumerate(fields.list_of(data, path)):
        r = fields.Reader(item, f"{path}[{i}]")
        metric = fields.string(r.get("metric", required=True), r.at("metric"))
        if metric == SLOW_REQUESTS and metric not in metric_names:
            raise ConfigError(r.at("metric"), "slow_requests is counted only when the spec sets slow_request (e.g. 1s)")
        if metric not in metric_names:
            raise ConfigError(r.at("metric"), f"unknown metric {metric!r}; known: {', '.join(sorted(metric_names))}")
        rails.append(
            Guardrail(
                metric=metric,
                direction=fields.choice(r.get("direction", required=True), r.at("direction"), ("increase", "decrease")),
                margin=fields.number(r.get("margin", required=True), r.at("margin"), low=0),
                relative=fields.boolean(r.get("relative", False), r.at("relative")),
                min_margin=fields.number(r.get("min_margin", 0.0), r.at("min_margin"), low=0),
            )
        )
        if rails[-1].min_margin and not rails[-1].relative:
            raise ConfigError(r.at("min_margin"), "floors a relative margin only; set relative: true or drop it")
        r.done()
    return tuple(rails)


def _analysis(data: Any, path: str, metric_names: set[str]) -> AnalysisSettings:
    d = AnalysisSettings()
    r = fields.Reader(data, path)
    ramp = tuple(
        fields.number(x, f"{r.at('ramp')}[{i}]", low=0, high=100, low_open=True)
        for i, x in enumerate(fields.list_of(r.get("ramp", list(d.ramp)), r.at("ramp")))
    )
    if list(ramp) != sorted(set(ramp)):
        raise ConfigError(r.at("ramp"), f"must be strictly increasing, got {list(ramp)}")
    b = fields.Reader(r.get("bandit", {}), r.at("bandit"))
    bandit = Bandit(
        enabled=fields.boolean(b.get("enabled", d.bandit.enabled), b.at("enabled")),
        # A floor of 0 let Thompson sampling push the control to ~0% and a candidate to
        # 100%, which the next look read as "already promoted", bypassing every gate.
        floor=fields.number(b.get("floor", d.bandit.floor), b.at("floor"), low=MIN_BANDIT_FLOOR, high=0.5),
        min_units=fields.integer(b.get("min_units", d.bandit.min_units), b.at("min_units"), low=1),
    )
    b.done()
    # The defaults guard only what is measured: slow_requests needs the spec's threshold.
    defaults = tuple(g for g in d.guardrails if g.metric in metric_names)
    guardrails = (
        _guardrails(r.get("guardrails"), r.at("guardrails"), metric_names) if "guardrails" in r.data else defaults
    )
    r.seen.add("guardrails")
    settings = AnalysisSettings(
        alpha=fields.number(r.get("alpha", d.alpha), r.at("alpha"), low=0, high=0.5, low_open=True),
        min_units_per_arm=fields.integer(
            r.get("min_units_per_arm", d.min_units_per_arm), r.at("min_units_per_arm"), low=2
        ),
        max_duration_s=fields.duration(r.get("max_duration", d.max_duration_s), r.at("max_duration")),
        burn_in_s=_off_or_duration(r.get("burn_in", d.burn_in_s), r.at("burn_in")),
        srm_alpha=fields.number(r.get("srm_alpha", d.srm_alpha), r.at("srm_alpha"), low=0, high=0.5, low_open=True),
        expected_units_per_arm=fields.integer(
            r.get("expected_units_per_arm", d.expected_units_per_arm), r.at("expected_units_per_arm"), low=10
        ),
        guardrails=guardrails,
        ramp=ramp,
        ramp_rest=_optional_name(r.get("ramp_rest", None), r.at("ramp_rest")),
        bandit=bandit,
        multiple_exposures=fields.choice(
            r.get("multiple_exposures", d.multiple_exposures), r.at("multiple_exposures"), ("keep", "exclude")
        ),
        scale_down_losers=fields.boolean(r.get("scale_down_losers", d.scale_down_losers), r.at("scale_down_losers")),
        secondary_correction=fields.choice(
            r.get("secondary_correction", d.secondary_correction),
            r.at("secondary_correction"),
            get_args(SecondaryCorrection),
        ),
    )
    r.done()
    return settings


_METHOD = re.compile(r"^(\*|[A-Z]+)$")


def _exposures(data: Any, path: str) -> tuple[ExposureRule, ...]:
    rules = []
    for i, item in enumerate(fields.list_of(data, path)):
        r = fields.Reader(item, f"{path}[{i}]")
        method = fields.string(r.get("method", "*"), r.at("method"), _METHOD, "an HTTP method in capitals or '*'")
        pattern = fields.string(r.get("path", required=True), r.at("path"))
        if not pattern.startswith("/"):
            raise ConfigError(r.at("path"), f"must start with '/', got {pattern!r}")
        rules.append(ExposureRule(method=method, path=pattern))
        r.done()
    return tuple(rules)


def parse(data: Any) -> Experiment:
    """Validate a spec (as loaded from YAML/JSON or a custom resource's spec)."""
    r = fields.Reader(data, "")
    name = fields.string(r.get("name", required=True), "name", _DNS_LABEL, "a DNS-1123 label (lowercase a-z, 0-9, '-')")
    variants = _variants(r.get("variants", required=True), "variants")
    metrics = _metrics(r.get("metrics", []), "metrics")
    slow = r.get("slow_request", None)
    slow_request_s = None if slow is None else fields.duration(slow, "slow_request")
    metric_names = {m.name for m in metrics} | set(BUILTIN_METRICS)
    if slow_request_s is None:
        metric_names.discard(SLOW_REQUESTS)
    t = fields.Reader(r.get("timeouts", {}), "timeouts")
    timeouts = Timeouts(
        connect_s=fields.duration(t.get("connect", Timeouts.connect_s), t.at("connect")),
        read_s=fields.duration(t.get("read", Timeouts.read_s), t.at("read")),
    )
    t.done()
    experiment = Experiment(
        name=name,
        salt=fields.string(r.get("salt", name), "salt"),
        unit=_unit(r.get("unit", required=True), "unit"),
        variants=variants,
        metrics=metrics,
        epoch=fields.integer(r.get("epoch", 1), "epoch", low=1, high=MAX_EPOCH),
        allow_force_variant=fields.boolean(r.get("allow_force_variant", False), "allow_force_variant"),
        outcome_ttl_s=fields.duration(r.get("outcome_ttl", Experiment.outcome_ttl_s), "outcome_ttl"),
        timeouts=timeouts,
        analysis=_analysis(r.get("analysis", {}), "analysis", metric_names),
        exposures=_exposures(r.get("exposures", []), "exposures"),
        slow_request_s=slow_request_s,
        covariates=_covariates(r.get("covariate", None), r.get("covariates", None), metric_names),  # [cuped]
        match=_match(r.get("match", {}), "match"),
    )
    r.done()
    _cuped_ratios(metrics, experiment.covariate)  # [cuped]
    _ramp_rest(experiment)
    return experiment


def _optional_name(value: Any, path: str) -> str | None:
    return None if value is None else fields.string(value, path)


def _ramp_rest(experiment: Experiment) -> None:
    """[balanced ramp] The rest variant serves the control's model, outside a ramp with room for an even split."""
    a = experiment.analysis
    if a.ramp_rest is None:
        return
    path, control = "analysis.ramp_rest", experiment.control
    rest = next((v for v in experiment.variants[1:] if v.name == a.ramp_rest and not v.shadow), None)
    if rest is None:
        names = ", ".join(v.name for v in experiment.variants[1:] if not v.shadow)
        raise ConfigError(path, f"must name a variant other than the control, got {a.ramp_rest!r}; known: {names}")
    served = ("upstream", "grpc_upstream", "model")
    if any(getattr(rest, f) != getattr(control, f) for f in served):
        raise ConfigError(path, f"{rest.name} must serve the control's model: same upstream, grpc_upstream and model")
    if not a.ramp or a.bandit.enabled or experiment.shadows:
        raise ConfigError(path, "balances a ramp: needs analysis.ramp, and no bandit nor shadow variants")
    k = sum(1 for v in experiment.variants[1:] if v is not rest and not v.shadow)
    if k == 0 or a.ramp[-1] * (k + 1) / k > 100:
        raise ConfigError(
            path, f"the final ramp step {a.ramp[-1]:g}% leaves no room for a control of each candidate's share"
        )


#: Variants an experiment may have: a request id holds the variant's index in one byte.
MAX_VARIANTS = 256


def _off_or_duration(value: Any, path: str) -> float:
    """A duration, or 0 (``0``, ``"0"``, ``"0s"``) to turn the setting off."""
    if value in (0, "0", "0s"):
        return 0.0
    return fields.duration(value, path)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                mark = key_node.start_mark
                raise ConfigError("", f"duplicate key {key!r} at line {mark.line + 1}, column {mark.column + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def loads(text: str, source: str = "<string>") -> Experiment:
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    except ConfigError as exc:
        raise ConfigError("", f"{source}: {exc}") from None
    except RecursionError:
        raise ConfigError("", f"{source}: not valid YAML: nested too deeply") from None
    try:
        return parse(data)
    except ConfigError as exc:  # name the file and the line, as YAML's own errors do
        line = _line_of(text, exc.path)
        where = source if line is None else f"{source}, line {line}"
        raise ConfigError(exc.path, exc.message, where=where) from None


_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _line_of(text: str, path: str) -> int | None:
    """The line of the field `path` names (``variants[0].weight``) in the YAML `text`.

    A field that is missing (``is required``) is placed on the line of the mapping that
    should hold it.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    line = None if node is None else node.start_mark.line + 1
    for index, key in _PATH_PART.findall(path):
        found = _child(node, int(index) if index else key)
        if found is None:
            break
        line, node = found
    return line


def _child(node: yaml.Node | None, step: int | str) -> tuple[int, yaml.Node] | None:
    """The line of `step` (a key, or a list index) in `node`, and the node it leads to."""
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        item = node.value[step]
        return item.start_mark.line + 1, item
    if isinstance(node, yaml.MappingNode) and isinstance(step, str):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == step:
                return key.start_mark.line + 1, value
    return None


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
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{path}: not UTF-8 text (byte {exc.start})") from None
    return loads(text, str(path))
