"""`next_spec`: what a sink should write for a decision. Pure; every sink shares it.

A sink only reads the current spec and writes the next one; the rules live here:
- the decision was computed under weights epoch `epoch`; if the current spec has moved on
  (a person or another analyzer changed the weights), writing would overwrite newer
  weights with a decision made on older data: `ConflictError`, and the next look decides
  on fresh data;
- unchanged weights (to the reported precision) write nothing, so no empty epoch opens;
- otherwise the new weights, validated, with the next epoch.
"""

from __future__ import annotations

from abrouter.analysis.data import percent
from abrouter.analysis.decision import Decision
from abrouter.analysis.errors import ConflictError
from abrouter.analysis.weights import same_weights
from abrouter.contract import experiment as spec


def next_spec(current: spec.Experiment, decision: Decision, *, epoch: int, where: str) -> spec.Experiment | None:
    """The spec to write for `decision`, or None when nothing changes. `where` names the target."""
    if current.epoch != epoch:
        raise ConflictError(
            f"{where}: the weights changed since the analysis (epoch {current.epoch}, analysed {epoch}); not writing"
        )
    if same_weights(decision.weights, percent({v.name: v.weight for v in current.variants})):
        return None
    return spec.with_weights(current, decision.weights)
