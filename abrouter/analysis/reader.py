"""Read one experiment's aggregates from Redis into `ExperimentData`.

Only through `abrouter.contract.keys`: one MULTI/EXEC round trip with ``HGETALL agg`` and
``HGETALL epochs``, decoded by `keys.decode_agg` / `keys.decode_epochs`. Both hashes hold
a fixed number of fields per (epoch, variant, metric), so the cost of a read does not
depend on traffic. All keys share the experiment's hash tag, so the transaction is
valid on Redis Cluster too.

Samples, per (epoch, variant) stratum with n = the stratum's units:

- user metrics: unit-level means, Sample(n, Σx_u, Σx_u²); binary x_u is 0/1, so Σx² = Σx;
- built-ins (errors, latency_ms): per-request ratios Σx_u / Σn_u, with the denominator
  sums the delta method needs (den_sum = exposures, den_sum_sq = Σn_u², sum_products =
  Σx_u·n_u).
"""

from __future__ import annotations

import dataclasses

import redis
import redis.asyncio

from abrouter.analysis import data as d
from abrouter.analysis.errors import SourceError
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import keys as schema
from abrouter.contract.experiment import Experiment, Metric


async def read(
    client: redis.asyncio.Redis, experiment: Experiment, *, keys: schema.Keys | None = None
) -> d.ExperimentData:
    keys = keys or schema.Keys(experiment.name)
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.agg)
            pipe.hgetall(keys.epochs)
            pipe.hget(keys.meta, "reset_at")
            agg, epochs, reset_at = await pipe.execute()
    except redis.RedisError as exc:
        raise SourceError(f"cannot read experiment {experiment.name!r} from Redis: {exc}") from exc
    data = build(experiment, schema.decode_agg(agg), schema.decode_epochs(epochs))
    if reset_at is not None:  # a router saw Redis lose the experiment's data
        data = dataclasses.replace(data, incomplete_since=float(reset_at))
    return data


def build(
    experiment: Experiment, strata: dict[tuple[int, str], schema.StratumSums], epochs: dict[int, schema.EpochInfo]
) -> d.ExperimentData:
    """Pure: decoded Redis contents plus the spec -> `ExperimentData`."""
    metrics = experiment.metrics + d.BUILTIN_METRIC_SPECS
    timeline = _epochs(experiment, strata, epochs)
    current = d.percent({v.name: v.weight for v in experiment.variants})
    arms = tuple(
        d.Arm(
            name=v.name,
            weight=current[v.name],
            strata=tuple(_stratum(s, metrics) for (_, name), s in sorted(strata.items()) if name == v.name),
        )
        for v in experiment.variants
    )
    since = [e.since for e in timeline if e.since is not None]
    return d.ExperimentData(
        name=experiment.name,
        metrics=metrics,
        arms=arms,
        epochs=timeline,
        settings=experiment.analysis,
        started_at=min(since) if since else None,
    )


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


def _stratum(s: schema.StratumSums, metrics: tuple[Metric, ...]) -> d.Stratum:
    return d.Stratum(epoch=s.epoch, units=s.units, metrics={m.name: _sample(s, m) for m in metrics})


def _sample(s: schema.StratumSums, metric: Metric) -> Sample:
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
