"""Where decisions go: a small protocol with one implementation per target.

`WeightsSink.apply` writes the decision's weights and returns whether anything changed.
The weights version (`epoch`) the decision was computed under comes along; what to write
is decided by `sinks.policy.next_spec`, so a sink only reads and writes. Implementations:

- `file.FileSink`: the experiment YAML the router watches;
- `DryRunSink`: records decisions, changes nothing (`analyze` without ``--apply``);

The Kubernetes sink (`kube.KubeSink`) is not one of them: a decision there is several
writes made whole or nothing, so `abrouter.analysis.kube_look` drives it step by step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from abrouter.analysis.decision import Decision


class WeightsSink(Protocol):
    async def apply(self, decision: Decision, *, epoch: int) -> bool:
        """Serve `decision.weights` from now on; True when they differ from the current ones."""
        ...


@dataclass
class DryRunSink:
    """Keeps the decisions it was given (for tests and dry runs) and writes nothing."""

    decisions: list[Decision] = field(default_factory=list)

    async def apply(self, decision: Decision, *, epoch: int) -> bool:
        self.decisions.append(decision)
        return False
