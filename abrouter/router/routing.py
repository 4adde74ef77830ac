"""The routing table: what the request path reads to pick a variant. Pure.

A `RoutingTable` is immutable and replaced whole when the weights change, so a request
always sees one consistent (experiment, weights, epoch) triple.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from abrouter.contract.experiment import Experiment
from abrouter.router.assignment import Assigner
from abrouter.router.errors import ReloadRejected


@dataclass(frozen=True)
class RoutingTable:
    experiment: Experiment
    #: Wall-clock time this weights epoch started in this process.
    since: float
    assigner: Assigner = field(init=False)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        e = self.experiment
        object.__setattr__(
            self, "assigner", Assigner(salt=e.salt, names=tuple(v.name for v in e.variants), weights=e.weights)
        )
        object.__setattr__(self, "index", {v.name: i for i, v in enumerate(e.variants)})

    @property
    def epoch(self) -> int:
        return self.experiment.epoch

    def weights_by_name(self) -> dict[str, float]:
        return {v.name: w for v, w in zip(self.experiment.variants, self.experiment.weights)}


def next_table(current: RoutingTable, new: Experiment, *, now: float) -> RoutingTable:
    """The table to switch to for a changed spec, or `current` when nothing that matters changed.

    Replicas agree on an epoch only if it comes from the spec, so new weights must come
    with a higher epoch; otherwise events would be logged under a stale stratum.
    """
    old = current.experiment
    if new == old:
        return current
    if new.name != old.name or new.salt != old.salt:
        raise ReloadRejected(
            "name and salt cannot change while the router runs (that would be a different experiment); restart it"
        )
    if [v.name for v in new.variants] != [v.name for v in old.variants]:
        raise ReloadRejected("variants cannot be added, removed or reordered while the router runs; restart it")
    if new.metrics[: len(old.metrics)] != old.metrics:
        # The event log stores per-unit sums in metric order; only appending keeps them valid.
        raise ReloadRejected(
            "metrics can only be appended while the router runs; removing, reordering "
            "or changing the kind or direction of one needs a restart (and a new experiment)"
        )
    if new.weights != old.weights and new.epoch <= old.epoch:
        raise ReloadRejected(
            f"weights changed but epoch did not increase (still {new.epoch}); "
            f"raise `epoch` to {old.epoch + 1} together with the weights"
        )
    if new.epoch < old.epoch:
        raise ReloadRejected(f"epoch went backwards ({old.epoch} -> {new.epoch})")
    since = now if new.epoch != old.epoch else current.since
    return RoutingTable(experiment=new, since=since)
