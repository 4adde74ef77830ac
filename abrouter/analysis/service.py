"""The analyzer's look: read Redis, analyze with the history's running results, act, record.

The CLI (`abrouter analyze`), the Kubernetes sink's loop, the demo and the benchmarks all
call `look`; none copies it.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from abrouter import redisclient
from abrouter.analysis import analyzer, history, reader
from abrouter.analysis.data import ExperimentData
from abrouter.analysis.errors import NoDataError
from abrouter.analysis.sinks.base import WeightsSink
from abrouter.analysis.witness import Witness, compare, observe
from abrouter.contract import experiment as spec
from abrouter.contract import keys as schema


async def look(
    client: redisclient.Client,
    experiment: spec.Experiment,
    *,
    sink: WeightsSink,
    now: float | None = None,
    keys: schema.Keys | None = None,
    witness: Witness | None = None,
) -> analyzer.AnalysisResult:
    """One look from Redis: read, analyze with the history's running minimum, apply, record.

    `NoDataError` when Redis holds nothing under the experiment's keys. With a `witness`
    (`abrouter.analysis.witness`), a Redis holding less than the last look saw makes the
    data incomplete since that look.
    """
    keys = keys or schema.Keys(experiment.name)
    result = await analyse(client, experiment, now=now, keys=keys, witness=witness)
    applied = await sink.apply(result.decision, epoch=experiment.epoch)
    await history.append(client, keys, result, applied=applied)
    return result


async def analyse(
    client: redisclient.Client,
    experiment: spec.Experiment,
    *,
    now: float | None = None,
    keys: schema.Keys | None = None,
    witness: Witness | None = None,
) -> analyzer.AnalysisResult:
    """Read and analyze (the first half of `look`): nothing is applied or recorded but the witness."""
    keys = keys or schema.Keys(experiment.name)
    data = await reader.read(client, experiment, keys=keys)
    if not data.found:
        # Nothing to decide on, and nothing recorded: a typo must not start a history.
        raise NoDataError(
            f"nothing found for experiment {experiment.name!r}: Redis has no {keys.agg} or {keys.epochs} "
            "(check the name and the prefix, or wait for the router's first flush)"
        )
    now = time.time() if now is None else now
    if witness is not None:
        data = _witnessed(data, witness, now=now)
    previous = await history.last(client, keys)
    seed = previous.previous(sum(a.units for a in data.arms)) if previous is not None else {}
    # alpha and expected_units_per_arm stay as the first look had them (issue 9, defect 6);
    # a data reset (no seed) starts a new sequence, which may pin new values.
    settings, ignored = history.pin(data.settings, previous.pinned if previous is not None and seed else {})
    data = dataclasses.replace(data, settings=settings)
    promoted = previous.promoted if previous is not None else None
    result = analyzer.analyze(data, now=now, previous=seed, rng=np.random.default_rng(), promoted=promoted)
    return dataclasses.replace(result, ignored_settings=ignored)


def _witnessed(data: ExperimentData, witness: Witness, *, now: float) -> ExperimentData:
    """`data`, marked incomplete when Redis holds less than the witness saw; the witness updated."""
    seen = compare(witness.load(), observe(data, at=now))
    witness.save(seen)
    if seen.incomplete_since is None or data.incomplete_since is not None:  # the routers' marker is more precise
        return data
    return dataclasses.replace(data, incomplete_since=seen.incomplete_since)
