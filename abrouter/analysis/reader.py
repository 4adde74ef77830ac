"""Read one experiment's aggregates from Redis into `ExperimentData`.

Only through `abrouter.contract.keys`: per shard of the experiment (``layout``, one
when unsharded), one MULTI/EXEC round trip with ``HGETALL agg``, ``HGETALL epochs`` and
``HGETALL latency``; the shards' sums are added (`keys.merge_sums`) and decoded by
`keys.decode_agg`, `keys.decode_epochs` and `keys.decode_latency`. The hashes hold a fixed
number of fields per (epoch, variant, metric or latency bucket), so the cost of a read does
not depend on traffic. A shard's keys share its hash tag, so each transaction is valid on
Redis Cluster too.

Samples, per (epoch, variant) stratum with n = the stratum's units:

- user metrics: unit-level means, Sample(n, Σx_u, Σx_u²); binary x_u is 0/1, so Σx² = Σx;
- ratio metrics of the spec (``kind: ratio``): Σx_u / Σy_u of the numerator's and the
  denominator's unit totals, with Σy_u, Σy_u² and Σx_u·y_u (``sum_xy``; ``sum_xn`` when the
  denominator is the exposures) for the delta method;
- units exposed to more than one variant are in the stratum of their first exposure
  (intent-to-treat, see `abrouter.contract.keys`); their count is reported per stratum and,
  with ``analysis.multiple_exposures: exclude``, their sums (the shadow stratum
  ``variant~mx``) are subtracted;
- [cuped] metrics the spec's covariate adjusts (`Experiment.cuped_metrics`) also carry
  Σc_u, Σc_u² (the covariate's column) and Σx_u·c_u (``sum_xy``) per stratum, and the
  adjusted ratios (`Experiment.cuped_ratios`) their numerator's Σx_u·c_u and their
  denominator's Σy_u·c_u (a built-in's ``sum_xy`` too; the exposures' Σn_u·c_u is the
  covariate column's ``sum_xn``); [regression] with several covariates the mean metrics
  carry all k instead (`MultiSums`: Σc_i, Σc_i², Σx·c_i and Σc_i·c_j, products the router
  keeps as pairs, `keys.covariate_pairs`), and the ratios the first covariate's sums;
- built-ins (errors, latency_ms, and slow_requests when the spec sets ``slow_request``):
  per-request ratios Σx_u / Σn_u, with the denominator sums the delta method needs
  (den_sum = exposures, den_sum_sq = Σn_u², sum_products = Σx_u·n_u);
- latency histograms per arm and epoch of the requests each arm served (`Arm.latency`),
  for quantiles (`abrouter.analysis.stats.histogram`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import redis

from abrouter import redisclient
from abrouter.analysis import data as d
from abrouter.analysis.errors import SourceError
from abrouter.analysis.stats.multisums import MultiSums
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import keys as schema
from abrouter.contract.experiment import EXPOSURES, SLOW_REQUESTS, Experiment, Metric, Variant


async def read(
    client: redisclient.Client, experiment: Experiment, *, keys: schema.Keys | None = None
) -> d.ExperimentData:
    keys = keys or schema.Keys(experiment.name)
    try:
        shards = schema.parse_layout(await client.get(keys.layout))
        replies = [await _read_shard(client, k) for k in schema.shard_keys(keys, shards)]
    except redis.RedisError as exc:
        raise SourceError(f"cannot read experiment {experiment.name!r} from Redis: {exc}") from exc
    except ValueError as exc:
        raise SourceError(f"experiment {experiment.name!r}: {keys.layout} in Redis: {exc}") from exc
    agg = schema.merge_sums([r[0] for r in replies])
    epochs = {k: v for r in reversed(replies) for k, v in r[1].items()}  # shard 0's (the only one written) wins
    latency = schema.merge_sums([r[3] for r in replies])
    strata, inconsistent = consistent(experiment, schema.decode_agg(agg))
    data = build(experiment, strata, schema.decode_epochs(epochs), latency=schema.decode_latency(latency))
    if inconsistent:
        data = dataclasses.replace(data, inconsistent=inconsistent)
    reset_at, lost_events, lost_from, lost_to = _marker([r[2] for r in replies])
    if reset_at is not None:  # a router saw Redis lose the experiment's data
        data = dataclasses.replace(data, incomplete_since=reset_at)
    if lost_events is not None:  # a router saw Redis come back without batches it had acknowledged
        span = (lost_from or 0.0, lost_to or 0.0)
        data = dataclasses.replace(data, lost_events=int(lost_events), lost_between=span)
    # The router registers the epoch with its first flush, so both empty means no router
    # ever wrote here: most likely a typo in the name, or a prefix that differs.
    return data if agg or epochs or reset_at is not None else dataclasses.replace(data, found=False)


async def _read_shard(client: redisclient.Client, keys: schema.Keys) -> list[Any]:
    """One shard's (agg, epochs, marker, latency), in one MULTI/EXEC: its keys share a slot."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.agg)
        pipe.hgetall(keys.epochs)
        pipe.hmget(keys.meta, ["reset_at", "lost_events", "lost_from", "lost_to"])
        pipe.hgetall(keys.latency)
        return list(await pipe.execute())


def _marker(shards: list[list[Any]]) -> tuple[float | None, float | None, float | None, float | None]:
    """Pure: (reset_at, lost_events, lost_from, lost_to) over the shards' markers: the latest
    reset, the lost events summed, their span from the earliest to the latest."""
    columns = [[float(v) for v in column if v is not None] for column in zip(*shards)]
    reset_at, lost, since, until = columns
    return (
        max(reset_at, default=None),
        sum(lost) if lost else None,
        min(since, default=None),
        max(until, default=None),
    )


def build(
    experiment: Experiment,
    strata: dict[tuple[int, str], schema.StratumSums],
    epochs: dict[int, schema.EpochInfo],
    *,
    latency: dict[tuple[int, str], tuple[int, ...]] | None = None,
) -> d.ExperimentData:
    """Pure: decoded Redis contents plus the spec -> `ExperimentData`."""
    metrics = experiment.metrics + measured_builtins(experiment)
    latency = latency or {}
    timeline = _epochs(experiment, strata, epochs)
    current = d.percent({v.name: v.weight for v in experiment.variants})
    exclude = experiment.analysis.multiple_exposures == "exclude"
    arms = tuple(
        d.Arm(
            name=v.name,
            weight=current[v.name],
            strata=tuple(
                _covariate(experiment, s, strata.get((e, v.name + schema.MULTIPLE_SUFFIX)), metrics, exclude=exclude)
                for (e, name), s in sorted(strata.items())
                if name == v.name
            ),
            latency={e: counts for (e, name), counts in latency.items() if name == v.name},
        )
        for v in experiment.variants
        if not v.shadow
    )
    since = [e.since for e in timeline if e.since is not None]
    return d.ExperimentData(
        name=experiment.name,
        metrics=metrics,
        arms=arms,
        epochs=timeline,
        settings=experiment.analysis,
        started_at=min(since) if since else None,
        shadows=tuple(_shadow(v, strata, latency, measured_builtins(experiment)) for v in experiment.shadows),
    )


# [shadow]
def _shadow(
    v: Variant,
    strata: dict[tuple[int, str], schema.StratumSums],
    latency: dict[tuple[int, str], tuple[int, ...]],
    metrics: tuple[Metric, ...],
) -> d.Shadow:
    """A shadow's replies (``v~shadow``) as an arm, with its agreement (``v~agree``) in each epoch's stratum."""
    replies, compared = v.name + schema.SHADOW_SUFFIX, v.name + schema.AGREEMENT_SUFFIX
    out = []
    for (epoch, name), s in sorted(strata.items()):
        if name == replies:
            stratum = _stratum(s, metrics, None, exclude=False)
            agreed = _agreement(strata.get((epoch, compared)) or schema.StratumSums(epoch=epoch, variant=compared))
            out.append(dataclasses.replace(stratum, metrics={**stratum.metrics, d.AGREEMENT.name: agreed}))
    hist = {e: counts for (e, name), counts in latency.items() if name == replies}
    return d.Shadow(name=v.name, percent=v.shadow_percent, arm=d.Arm(name=v.name, weight=0.0, strata=tuple(out),
                                                                      latency=hist))  # fmt: skip


def _agreement(s: schema.StratumSums) -> Sample:
    """Agreements per copy, x_u = n_u - d_u from the disagreements d_u (the stratum's ``errors``)."""
    d_u, n = s.metrics.get("errors") or schema.MetricSums(), float(s.exposures)
    return Sample(
        n=s.units,
        sum=n - d_u.sum,
        sum_sq=s.exposures_sq - 2 * d_u.sum_xn + d_u.sum_sq,
        den_sum=n,
        den_sum_sq=s.exposures_sq,
        sum_products=s.exposures_sq - d_u.sum_xn,
    )


# [/shadow]


def consistent(
    experiment: Experiment, strata: dict[tuple[int, str], schema.StratumSums]
) -> tuple[dict[tuple[int, str], schema.StratumSums], tuple[str, ...]]:
    """Pure but for clamping `strata` (freshly decoded) in place: impossible binary sums into [0, units].

    Returns the strata and one line per clamp.

    Bad data is a result, not an exception: a binary sum above the stratum's units (left by
    routers from before outcomes were held until their exposure, see flush.lua [held])
    made the statistics raise and ``abrouter analyze`` die. It is reported instead.
    """
    binary = {m.name for m in experiment.metrics if m.kind == "binary"}
    lines = []
    for (epoch, variant), s in sorted(strata.items()):
        for name in sorted(binary & set(s.metrics)):
            m = s.metrics[name]
            clamped = min(max(m.sum, 0.0), float(max(s.units, 0)))
            if clamped != m.sum:
                lines.append(f"epoch {epoch} {variant}: {name} sum {m.sum:g} is outside [0, units={s.units}]")
                m.sum = m.sum_sq = clamped
    return strata, tuple(lines)


def measured_builtins(experiment: Experiment) -> tuple[Metric, ...]:
    """The built-ins the router measures for `experiment`: slow_requests needs its threshold."""
    if experiment.slow_request_s is not None:
        return d.BUILTIN_METRIC_SPECS
    return tuple(m for m in d.BUILTIN_METRIC_SPECS if m.name != SLOW_REQUESTS)


def _epochs(
    experiment: Experiment, strata: dict[tuple[int, str], schema.StratumSums], epochs: dict[int, schema.EpochInfo]
) -> tuple[d.Epoch, ...]:
    """Every epoch with data or registered, plus the spec's current one (maybe no data yet)."""
    ids = sorted(set(epochs) | {e for e, _ in strata} | {experiment.epoch})
    out = []
    for epoch in ids:
        info = epochs.get(epoch)
        if info is not None:
            out.append(d.Epoch(epoch=epoch, weights=d.percent(info.weights), since=info.since))
        elif epoch == experiment.epoch:
            out.append(d.Epoch(epoch=epoch, weights=d.percent({v.name: v.weight for v in experiment.variants})))
        else:
            out.append(d.Epoch(epoch=epoch, weights={}))  # unknown split: SRM skips it
    return tuple(out)


def _stratum(
    s: schema.StratumSums, metrics: tuple[Metric, ...], mx: schema.StratumSums | None, *, exclude: bool
) -> d.Stratum:
    """One arm's epoch stratum; `mx` are its multiple-exposure units' sums (subtracted if `exclude`)."""
    multiple = mx.units if mx is not None else 0
    if exclude and mx is not None:
        s = schema.subtract(s, mx)
    return d.Stratum(
        epoch=s.epoch,
        units=s.units,
        exposures=s.exposures,
        metrics={m.name: _sample(s, m) for m in metrics},
        multiple_exposures=multiple,
    )


# [cuped]
def _covariate(
    experiment: Experiment,
    s: schema.StratumSums,
    mx: schema.StratumSums | None,
    metrics: tuple[Metric, ...],
    *,
    exclude: bool,
) -> d.Stratum:
    """`_stratum`, with Σc, Σc², Σx·c (and a ratio's Σy·c) attached to the samples the covariate adjusts.

    Unit-level sums like the others: with ``multiple_exposures: exclude`` they are taken
    after the multiple-exposure units' sums are subtracted (`schema.subtract` covers
    every column and cross product).
    """
    stratum = _stratum(s, metrics, mx, exclude=exclude)
    if experiment.covariate is None:
        return stratum
    if exclude and mx is not None:
        s = schema.subtract(s, mx)
    cov = s.metrics.get(experiment.covariate) or schema.MetricSums()
    samples = dict(stratum.metrics)
    products = {
        name: (s.metrics.get(name) or schema.MetricSums()).sum_xy.get(experiment.covariate, 0.0)
        for name in (*experiment.cuped_metrics, *experiment.cuped_builtins)
    }
    for name in experiment.cuped_metrics:
        samples[name] = (
            _several(s, samples[name], name, experiment.covariates)
            if len(experiment.covariates) > 1
            else dataclasses.replace(samples[name], cov_sum=cov.sum, cov_sum_sq=cov.sum_sq, cov_products=products[name])
        )
    products[EXPOSURES] = cov.sum_xn  # Σn_u·c_u: the covariate column's own cross product with n_u
    for m in experiment.cuped_ratios:  # Σx·c and Σy·c are its parts' products with the covariate
        samples[m.name] = dataclasses.replace(
            samples[m.name],
            cov_sum=cov.sum,
            cov_sum_sq=cov.sum_sq,
            cov_products=products[m.numerator or ""],
            den_cov_products=products[m.denominator or ""],
        )
    return dataclasses.replace(stratum, metrics=samples)


def _several(s: schema.StratumSums, sample: Sample, name: str, covariates: tuple[str, ...]) -> Sample:
    """[regression] Mean metric `name`'s `sample` with its k covariates' sums (`MultiSums`): Σc_i, Σc_i²
    (c_i's column), Σx·c_i (the pair (name, c_i)), Σc_i·c_j (the pair (c_i, c_j), i < j)."""
    none = schema.MetricSums()
    cols = [s.metrics.get(c) or none for c in covariates]
    xy = (s.metrics.get(name) or none).sum_xy
    k = len(covariates)

    def cross(i: int, j: int) -> float:
        if i == j:
            return cols[i].sum_sq
        lo, hi = min(i, j), max(i, j)
        return cols[lo].sum_xy.get(covariates[hi], 0.0)

    sums = MultiSums(
        n=float(sample.n),
        sum=sample.sum,
        sum_sq=sample.sum if sample.sum_sq is None else sample.sum_sq,
        cov_sum=tuple(c.sum for c in cols),
        cov_products=tuple(xy.get(c, 0.0) for c in covariates),
        cov_cross=tuple(tuple(cross(i, j) for j in range(k)) for i in range(k)),
    )
    return dataclasses.replace(sample, covariates=sums)


# [/cuped]


def _sample(s: schema.StratumSums, metric: Metric) -> Sample:
    if metric.is_ratio:
        return _ratio(s, metric)
    sums = s.metrics.get(metric.name) or schema.MetricSums()
    if metric.name in d.BUILTIN_NAMES:
        return Sample(
            n=s.units,
            sum=sums.sum,
            sum_sq=sums.sum_sq,
            den_sum=float(s.exposures),
            den_sum_sq=s.exposures_sq,
            sum_products=sums.sum_xn,
        )
    sum_sq = sums.sum if metric.kind == "binary" else sums.sum_sq
    return Sample(n=s.units, sum=sums.sum, sum_sq=sum_sq)


def _ratio(s: schema.StratumSums, metric: Metric) -> Sample:
    """A spec ratio: its numerator's unit sums over its denominator's (or the exposures).

    Σx² is stored for every column (for binary metrics it equals Σx), so no kind matters.
    """
    num = s.metrics.get(metric.numerator or "") or schema.MetricSums()
    if metric.denominator == EXPOSURES:
        den_sum, den_sum_sq, products = float(s.exposures), s.exposures_sq, num.sum_xn
    else:
        den = s.metrics.get(metric.denominator or "") or schema.MetricSums()
        den_sum, den_sum_sq = den.sum, den.sum_sq
        products = num.sum_xy.get(metric.denominator or "", 0.0)
    return Sample(
        n=s.units, sum=num.sum, sum_sq=num.sum_sq, den_sum=den_sum, den_sum_sq=den_sum_sq, sum_products=products
    )
