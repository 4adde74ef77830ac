"""Parse exported sufficient statistics (``--summary FILE.json`` / ``.jsonl``).

A summary is one JSON object (docs/analyzer.md has the full format)::

    {"metrics": [{"name": "revenue", "kind": "continuous", "direction": "increase"}],
     "variants": [
       {"name": "control", "weight": 50, "units": 3407,
        "metrics": {"revenue": {"n": 3407, "sum": 1396.87, "sum_squares": 52377.9767}}},
       ...]}

The variants, metrics and `analysis:` settings are validated by the experiment parser
(`abrouter.contract.experiment.parse`), so a summary accepts exactly what a spec accepts
and its errors carry the same paths. The rest (units, samples, strata, epochs) is checked
here with the same field validators (`abrouter.contract.fields`). Every error is an
`InputError` naming the file and the field path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from abrouter.analysis import data as d
from abrouter.analysis.errors import InputError
from abrouter.analysis.stats.multisums import MultiSums
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import experiment as spec
from abrouter.contract import fields

_TOP_KEYS = {"name", "metrics", "variants", "analysis", "epochs", "elapsed", "slow_request"}
_VARIANT_KEYS = {"name", "weight", "units", "metrics", "strata"}
_SAMPLE_KEYS = {
    "n", "sum", "sum_squares", "denominator_sum", "denominator_sum_squares", "sum_products", "covariates",
}  # fmt: skip
_COVARIATE_KEYS = ("sum", "sum_products", "cross_products")
_RATIO_KEYS = ("denominator_sum", "denominator_sum_squares", "sum_products")
#: Relative slack for the Cauchy-Schwarz checks (sum_squares * n >= sum**2): exports
#: round their sums, and rounding must not turn valid data into an error.
_SLACK = 1e-9
#: Stand-in upstream for the synthetic spec a summary is validated as.
_NO_UPSTREAM = "http://summary.invalid"


def load(path: str | Path) -> Iterator[tuple[d.ExperimentData, float | None]]:
    """Yield (data, elapsed seconds or None) for each summary in the file.

    ``.jsonl``/``.ndjson`` files hold one summary per line (blank lines skipped); any
    other file holds one JSON document. Parsing is lazy, so a bad line raises only when
    reached, after the lines before it were yielded.
    """
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InputError("", f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    with handle:
        if path.suffix in (".jsonl", ".ndjson"):
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield parse_text(line, source=f"{path}:{number}")
        else:
            yield parse_text(handle.read(), source=str(path))


def parse_text(text: str, *, source: str = "<summary>") -> tuple[d.ExperimentData, float | None]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError("", f"not valid JSON: {exc}", source=source) from None
    return parse(doc, source=source)


def parse(doc: Any, *, source: str = "<summary>") -> tuple[d.ExperimentData, float | None]:
    """Validate one summary document into `ExperimentData` and its optional elapsed time."""
    try:
        return _parse(doc)
    except InputError as exc:
        raise InputError(exc.path, exc.message, source=source) from None
    except spec.ConfigError as exc:
        raise InputError(exc.path, exc.message, source=source) from None


def _parse(doc: Any) -> tuple[d.ExperimentData, float | None]:
    top = _object(doc, "")
    fields.known_keys(top, _TOP_KEYS, "")
    raw_variants = fields.list_of(fields.required(top, "variants", ""), "variants")
    checked = _validate_spec(top, raw_variants)
    metrics = checked.metrics + _builtins_used(raw_variants)
    stratified = any(isinstance(v, Mapping) and "strata" in v for v in raw_variants)
    epochs = _epochs(top.get("epochs"), "epochs", checked) if stratified or "epochs" in top else None
    weights = d.percent({v.name: v.weight for v in checked.variants})
    arms = tuple(
        _arm(item, f"variants[{i}]", name=v.name, weight=weights[v.name], metrics=metrics, epochs=epochs)
        for i, (item, v) in enumerate(zip(raw_variants, checked.variants))
    )
    _same_shape(arms, raw_variants, metrics)
    data = d.ExperimentData(
        name=str(top.get("name", "summary")),
        metrics=metrics,
        arms=arms,
        epochs=epochs or (d.Epoch(epoch=1, weights=weights),),
        settings=checked.analysis,
    )
    elapsed = spec.parse_duration(top["elapsed"], "elapsed") if "elapsed" in top else None
    return data, elapsed


def _validate_spec(top: Mapping[str, Any], raw_variants: list[Any]) -> spec.Experiment:
    """Run the router's parser over the parts a summary shares with a spec."""
    variants = [_spec_variant(item) for item in raw_variants]
    synthetic = {
        "name": "summary",
        "unit": {"header": "x"},
        "variants": variants,
        "metrics": top.get("metrics", []),
        "analysis": top.get("analysis", {}),
    }
    if "slow_request" in top:  # the threshold slow_requests was counted with: guard it
        synthetic["slow_request"] = top["slow_request"]
    return spec.parse(synthetic)


def _spec_variant(item: Any) -> Any:
    if not isinstance(item, Mapping):
        return item  # the router's parser names the bad item
    return {k: item[k] for k in ("name", "weight") if k in item} | {"upstream": _NO_UPSTREAM}


def _builtins_used(raw_variants: list[Any]) -> tuple[spec.Metric, ...]:
    """Built-in metrics (errors, latency_ms, slow_requests) need no declaration; include those present."""
    present: set[str] = set()
    for item in raw_variants:
        sources = [item, *(item.get("strata") or [])] if isinstance(item, Mapping) else []
        for source in sources:
            if isinstance(source, Mapping) and isinstance(source.get("metrics"), Mapping):
                present |= set(source["metrics"])
    return tuple(m for m in d.BUILTIN_METRIC_SPECS if m.name in present)


def _same_shape(arms: tuple[d.Arm, ...], raw_variants: list[Any], metrics: tuple[spec.Metric, ...]) -> None:
    """A metric is a ratio (with denominators) in every variant and stratum, or in none."""
    for m in metrics:
        first: bool | None = None
        for i, (arm, raw) in enumerate(zip(arms, raw_variants)):
            for j, stratum in enumerate(arm.strata):
                sample = stratum.metrics.get(m.name)
                if sample is None:
                    continue
                if first is None:
                    first = sample.is_ratio
                elif sample.is_ratio != first:
                    at = f"variants[{i}]" + (f".strata[{j}]" if "strata" in raw else "")
                    raise InputError(
                        f"{at}.metrics.{m.name}",
                        f"{'gives' if sample.is_ratio else 'lacks'} "
                        "denominator sums unlike the variants before; a ratio metric needs "
                        "them everywhere",
                    )


def _epochs(raw: Any, path: str, checked: spec.Experiment) -> tuple[d.Epoch, ...]:
    if raw is None:
        raise InputError(path, "is required when variants give strata")
    names = {v.name for v in checked.variants}
    epochs = []
    for i, item in enumerate(fields.list_of(raw, path)):
        at = f"{path}[{i}]"
        e = _object(item, at)
        fields.known_keys(e, {"epoch", "weights", "since"}, at)
        weights = _object(fields.required(e, "weights", at), f"{at}.weights")
        for name, w in weights.items():
            if name not in names:
                raise InputError(f"{at}.weights.{name}", f"unknown variant; known: {', '.join(sorted(names))}")
            fields.number(w, f"{at}.weights.{name}", low=0)
        epochs.append(
            d.Epoch(
                epoch=fields.integer(fields.required(e, "epoch", at), f"{at}.epoch", low=1),
                weights=d.percent({n: float(weights.get(n, 0.0)) for n in names}),
                since=fields.number(e["since"], f"{at}.since") if "since" in e else None,
            )
        )
    ids = [e.epoch for e in epochs]
    if not ids or ids != sorted(set(ids)):
        raise InputError(path, f"must list one or more epochs in increasing order, got {ids}")
    return tuple(epochs)


def _arm(
    raw: Any,
    path: str,
    *,
    name: str,
    weight: float,
    metrics: tuple[spec.Metric, ...],
    epochs: tuple[d.Epoch, ...] | None,
) -> d.Arm:
    item = _object(raw, path)
    fields.known_keys(item, _VARIANT_KEYS, path)
    if "strata" in item:
        if "units" in item or "metrics" in item:
            raise InputError(path, "give either units and metrics, or strata, not both")
        strata = _strata(item["strata"], f"{path}.strata", metrics, epochs)
    elif epochs is not None and len(epochs) > 1:
        raise InputError(f"{path}.strata", "is required when epochs lists more than one epoch")
    else:
        strata = (_stratum(item, path, metrics, epoch=epochs[0].epoch if epochs else 1),)
    return d.Arm(name=name, weight=weight, strata=strata)


def _strata(
    raw: Any, path: str, metrics: tuple[spec.Metric, ...], epochs: tuple[d.Epoch, ...] | None
) -> tuple[d.Stratum, ...]:
    assert epochs is not None  # `_parse` requires epochs whenever strata appear
    known = {e.epoch for e in epochs}
    strata: list[d.Stratum] = []
    for i, item in enumerate(fields.list_of(raw, path)):
        at = f"{path}[{i}]"
        s = _object(item, at)
        fields.known_keys(s, {"epoch", "units", "metrics"}, at)
        epoch = fields.integer(fields.required(s, "epoch", at), f"{at}.epoch", low=1)
        if epoch not in known:
            raise InputError(f"{at}.epoch", f"epoch {epoch} is not listed in epochs")
        if epoch in {x.epoch for x in strata}:
            raise InputError(f"{at}.epoch", f"duplicate epoch {epoch}")
        strata.append(_stratum(s, at, metrics, epoch=epoch))
    return tuple(strata)


def _stratum(item: Mapping[str, Any], path: str, metrics: tuple[spec.Metric, ...], *, epoch: int) -> d.Stratum:
    units = fields.integer(fields.required(item, "units", path), f"{path}.units", low=0)
    raw = _object(fields.required(item, "metrics", path), f"{path}.metrics")
    declared = {m.name: m for m in metrics}
    for name in raw:
        if name not in declared:
            raise InputError(
                f"{path}.metrics.{name}", f"unknown metric; declare it in metrics (known: {', '.join(declared)})"
            )
    samples = {}
    for m in metrics:
        if m.name in raw:
            samples[m.name] = _sample(raw[m.name], f"{path}.metrics.{m.name}", m)
        elif m.name not in d.BUILTIN_NAMES:
            raise InputError(f"{path}.metrics.{m.name}", "is required (declared in metrics)")
    return d.Stratum(epoch=epoch, units=units, metrics=samples)


def _sample(raw: Any, path: str, metric: spec.Metric) -> Sample:
    s = _object(raw, path)
    fields.known_keys(s, _SAMPLE_KEYS, path)
    n = fields.integer(fields.required(s, "n", path), f"{path}.n", low=0)
    total = fields.number(fields.required(s, "sum", path), f"{path}.sum")
    ratio = [k for k in _RATIO_KEYS if k in s]
    if ratio and len(ratio) != len(_RATIO_KEYS):
        missing = next(k for k in _RATIO_KEYS if k not in s)
        raise InputError(
            f"{path}.{missing}", f"is required for a ratio metric (give all of {', '.join(_RATIO_KEYS)} or none)"
        )
    if not ratio and metric.is_ratio:
        raise InputError(f"{path}.denominator_sum", "is required: a ratio metric gives its denominator sums")
    if not ratio and metric.name in d.BUILTIN_NAMES:
        raise InputError(
            f"{path}.denominator_sum", "is required: built-in metrics are per-request ratios over the unit's exposures"
        )
    if "sum_squares" in s:
        sum_sq = fields.number(s["sum_squares"], f"{path}.sum_squares", low=0)
    elif metric.kind == "binary" and not ratio:
        sum_sq = total  # a 0/1 outcome is its own square
    else:
        raise InputError(f"{path}.sum_squares", f"is required for a {metric.kind} metric")
    if metric.kind == "binary" and not ratio and not 0 <= total <= n:
        raise InputError(f"{path}.sum", f"must be between 0 and n={n} for a binary metric, got {total:g}")
    _cauchy_schwarz(n, total, sum_sq, f"{path}.sum_squares")
    if not ratio:
        covariates = _covariates(s["covariates"], f"{path}.covariates", n, total, sum_sq) if "covariates" in s else None
        return Sample(n=n, sum=total, sum_sq=sum_sq, covariates=covariates)
    if "covariates" in s:
        raise InputError(f"{path}.covariates", "adjusts mean metrics only, not a ratio")
    den = fields.number(s["denominator_sum"], f"{path}.denominator_sum", low=0)
    den_sq = fields.number(s["denominator_sum_squares"], f"{path}.denominator_sum_squares", low=0)
    products = fields.number(s["sum_products"], f"{path}.sum_products")
    _cauchy_schwarz(n, den, den_sq, f"{path}.denominator_sum_squares")
    return Sample(n=n, sum=total, sum_sq=sum_sq, den_sum=den, den_sum_sq=den_sq, sum_products=products)


def _covariates(raw: Any, path: str, n: int, total: float, sum_sq: float) -> MultiSums:
    """[regression] k covariates' sums: Σc and Σx·c (k numbers each), Σc·cᵀ (k rows of k)."""
    item = _object(raw, path)
    fields.known_keys(item, _COVARIATE_KEYS, path)
    sums, products = (_numbers(fields.required(item, key, path), f"{path}.{key}") for key in _COVARIATE_KEYS[:2])
    rows = fields.list_of(fields.required(item, "cross_products", path), f"{path}.cross_products")
    cross = tuple(_numbers(row, f"{path}.cross_products[{i}]") for i, row in enumerate(rows))
    k = len(sums)
    if k == 0 or len(products) != k or len(cross) != k or any(len(row) != k for row in cross):
        raise InputError(path, f"sum and sum_products need one number per covariate, cross_products {k} rows of {k}")
    for i in range(k):
        _cauchy_schwarz(n, sums[i], cross[i][i], f"{path}.cross_products[{i}][{i}]")
        if any(abs(cross[i][j] - cross[j][i]) > _SLACK * (abs(cross[i][j]) + 1) for j in range(k)):
            raise InputError(f"{path}.cross_products", "must be symmetric (Σc_i·c_j = Σc_j·c_i)")
    return MultiSums(n=n, sum=total, sum_sq=sum_sq, cov_sum=sums, cov_products=products, cov_cross=cross)


def _numbers(raw: Any, path: str) -> tuple[float, ...]:
    return tuple(fields.number(x, f"{path}[{i}]") for i, x in enumerate(fields.list_of(raw, path)))


def _cauchy_schwarz(n: int, total: float, sum_sq: float, path: str) -> None:
    """A sum of squares below sum**2/n is impossible: usually swapped or mis-scaled fields."""
    if n > 0 and sum_sq * n < total * total * (1 - _SLACK) - _SLACK:
        raise InputError(path, f"must be >= sum**2/n = {total * total / n:.6g}, got {sum_sq:.6g}")


def _object(value: Any, path: str) -> Mapping[str, Any]:
    return fields.mapping(value, path, noun="an object")
