"""One look at an ``Experiment`` resource, in an order that makes a decision whole or nothing.

1. Read the resource. If an earlier look applied a decision and did not finish it (the
   annotation of `sinks.kube_pending`), finish it first: its history entry, its Events,
   its scale-down, its status, then remove the annotation. If that fails, stop there: no
   new decision is made on top of an unfinished one.
2. Read Redis and analyse (`service.analyse`).
3. With `apply`, write the weights and the intent in one patch (`KubeSink.apply`).
4. Append the look's history entry.
5. Publish: the decision's Events, the scale-down, the status (with the witness of what
   this look saw, `witness.StatusWitness`); the intent is removed last.

A failure after 3 is an `UnfinishedError` that says what was applied, and the next look
finishes it (each step of 4 and 5 is safe to redo).
"""

from __future__ import annotations

from abrouter import redisclient
from abrouter.analysis import history, service, witness
from abrouter.analysis.analyzer import AnalysisResult
from abrouter.analysis.errors import AnalysisError, UnfinishedError
from abrouter.analysis.sinks.kube import KubeSink
from abrouter.contract import keys as schema
from abrouter.kube.errors import KubeError


async def look(client: redisclient.Client, sink: KubeSink, *, apply: bool) -> AnalysisResult:
    """Steps 1-5; without `apply` only 2 and 4 (the history records the decision as not applied)."""
    current = await sink.read()
    keys = schema.Keys(current.experiment.name)
    if apply:
        await finish(client, keys, sink)
    # The witness goes where the decisions go: in the status, with apply only (`witness`).
    seen = witness.StatusWitness.of(current.status) if apply else None
    result = await service.analyse(client, current.experiment, keys=keys, witness=seen)
    if not apply:
        await history.append(client, keys, result, applied=False)
        return result
    entry = history.encode(result, applied=True)
    applied = await sink.apply(result.decision, epoch=current.experiment.epoch, at=result.at, entry=entry)
    try:
        if applied:
            await history.append_encoded(client, keys, entry)
        else:
            await history.append(client, keys, result, applied=False)
        await sink.publish(result, witness=seen.saved if seen is not None else None)
    except (AnalysisError, KubeError) as exc:
        pending = sink.pending
        if pending is None:
            raise
        raise UnfinishedError(
            f"Experiment {sink.ref}: applied {pending.applied()}, but not finished: {exc}; "
            "the next look finishes it (history, Events, scale-down, status)"
        ) from exc
    return result


async def finish(client: redisclient.Client, keys: schema.Keys, sink: KubeSink) -> None:
    """Step 1: finish the decision an earlier look applied, if there is one."""
    pending = sink.pending
    if pending is None:
        return
    try:
        if not sink.dry_run:
            await history.append_once(client, keys, pending.entry)
        await sink.finish()
    except (AnalysisError, KubeError) as exc:
        raise UnfinishedError(
            f"Experiment {sink.ref}: an earlier look applied {pending.applied()} and could not finish it; "
            f"finishing it failed: {exc}; no new decision until it is finished"
        ) from exc
