"""The routing table: what the request path reads to pick a variant. Pure.

A `RoutingTable` is immutable and replaced whole when the weights change, so a request
always sees one consistent (experiment, weights, epoch) triple.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from abrouter.contract.experiment import Experiment
from abrouter.contract.model import Variant
from abrouter.router import headers as hdr
from abrouter.router.assignment import Assigner
from abrouter.router.errors import ReloadRejected
from abrouter.router.exposures import Decider

if TYPE_CHECKING:
    from abrouter.router.metrics import ArmSeries


class Arm:
    """What every request of one variant shares, made once per table rather than per request: its tags as
    HTTP/2 fields (lower case) and its upstream's ``:authority`` for the gRPC path, and its metric series
    (`abrouter.router.metrics.ProxyMetrics.arm`, bound on first use: the metrics are the router's)."""

    __slots__ = ("authority", "experiment_tag", "grpc_upstream", "model", "name", "series", "variant", "variant_tag")

    def __init__(self, experiment: str, variant: Variant) -> None:
        self.variant = variant
        #: The variant's fields read per request (compiled attributes, not lookups on the spec's objects).
        self.name, self.grpc_upstream, self.model = variant.name, variant.grpc_upstream, variant.model
        self.experiment_tag = (hdr.EXPERIMENT_HEADER.lower(), experiment)
        self.variant_tag = (hdr.VARIANT_HEADER.lower(), variant.name)
        self.authority = (":authority", variant.grpc_upstream or "")
        self.series: ArmSeries | None = None


@dataclass(frozen=True)
class RoutingTable:
    experiment: Experiment
    #: Wall-clock time this weights epoch started in this process.
    since: float
    # Derived in __post_init__ (declared, so that the compiled build has room for them).
    assigner: Assigner = field(init=False)
    index: dict[str, int] = field(init=False)
    #: The experiment's weights epoch.
    epoch: int = field(init=False)
    #: Per variant, in the spec's order.
    arms: tuple[Arm, ...] = field(init=False, repr=False, compare=False)
    #: Which requests are exposures under the spec's ``exposures`` rules.
    exposures: Decider = field(init=False, repr=False, compare=False)
    #: The spec's fields read per request, copied here (a compiled attribute each, not a lookup on the spec's
    #: objects): where the unit id comes from, whether the override is allowed, the upstream timeouts.
    unit_kind: str = field(init=False, repr=False, compare=False)
    unit_name: str = field(init=False, repr=False, compare=False)
    allow_force_variant: bool = field(init=False, repr=False, compare=False)
    connect_s: float = field(init=False, repr=False, compare=False)
    read_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        e = self.experiment
        object.__setattr__(
            self, "assigner", Assigner(salt=e.salt, names=tuple(v.name for v in e.variants), weights=e.weights)
        )
        object.__setattr__(self, "index", {v.name: i for i, v in enumerate(e.variants)})
        object.__setattr__(self, "epoch", e.epoch)
        object.__setattr__(self, "arms", tuple(Arm(e.name, v) for v in e.variants))
        object.__setattr__(self, "exposures", Decider(e.exposures))
        object.__setattr__(self, "unit_kind", e.unit.kind)
        object.__setattr__(self, "unit_name", e.unit.name)
        object.__setattr__(self, "allow_force_variant", e.allow_force_variant)
        object.__setattr__(self, "connect_s", e.timeouts.connect_s)
        object.__setattr__(self, "read_s", e.timeouts.read_s)

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
