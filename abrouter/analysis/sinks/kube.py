"""`KubeSink`: decisions written to an ``Experiment`` resource through the Kubernetes API.

Who writes what, so that a person's ``kubectl edit`` / ``kubectl apply`` and the analyzer
never fight:

- **people own ``spec``**. The analyzer changes one thing in it, the weights it decides:
  a merge-patch of ``spec.variants`` that copies every variant as stored and changes only
  ``weight``, guarded by the ``metadata.resourceVersion`` it read. The routers follow
  ``spec``, so the weights they serve are whatever was written last, by either.
- **the analyzer owns ``status``**, written through the status subresource (which cannot
  touch ``spec``): effective weights and epoch, phase, the last decision and its reason,
  per-arm numbers and the conditions (`sinks.kube_status`).
- the epoch is ``metadata.generation`` (`abrouter.contract.resource`): the weight patch
  raises it, and so does a person's edit of the spec. A decision made under another
  generation than the current one is not written (`sinks.policy.next_spec` raises
  `ConflictError`): someone changed the spec since the look, and the next look decides
  on the new one.
- a 409 (the object changed between our read and our write: a status write, a label,
  anything) is retried from a fresh read, up to `attempts` times; each attempt writes
  the whole decision or nothing, never a half of it.
- ``spec.paused: true`` stops every write but ``status`` (phase Paused, the decision that
  would have been made): no weights, no Events, no scaling.
- Events on the Experiment: ``Ramped``, ``Promoted``, ``RolledBack`` when weights are
  written, ``SampleRatioMismatch`` and ``GuardrailBreached`` when the condition turns
  True, ``ScaledDown`` when a loser's Deployment is scaled to 0.
- after a promotion, with ``analysis.scale_down_losers: true``, every variant at weight 0
  that names a ``deployment`` is scaled to 0 replicas through the scale subresource.
- `dry_run`: every write is printed as ``would ...`` instead of made.

The client is synchronous; every call runs in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from abrouter.analysis.analyzer import AnalysisResult
from abrouter.analysis.decision import Decision
from abrouter.analysis.errors import ConflictError
from abrouter.analysis.sinks import kube_status
from abrouter.analysis.sinks.policy import next_spec
from abrouter.contract import resource
from abrouter.contract.resource import ExperimentResource
from abrouter.kube import errors
from abrouter.kube.client import KubeClient, Ref

DECISION_EVENTS = {"ramp": "Ramped", "promote": "Promoted", "rollback": "RolledBack"}
CONDITION_EVENTS = ("SampleRatioMismatch", "GuardrailBreached")


class KubeSink:
    """`WeightsSink` for an Experiment resource; `publish` then writes the look's status."""

    def __init__(
        self, client: KubeClient, ref: Ref, *, dry_run: bool = False, attempts: int = 5, out: TextIO | None = None
    ) -> None:
        self.client = client
        self.ref = ref
        self.dry_run = dry_run
        self.attempts = attempts
        self.out = out or sys.stdout
        #: What the last look did (or, dry, would do), one line each.
        self.actions: list[str] = []
        self._applied = False
        #: The generation of the spec the look analyses (`read`): the conditions' observedGeneration.
        self._observed = 0

    async def read(self) -> ExperimentResource:
        """The resource now; a bad spec raises `ConfigError` naming the field (``spec.variants[0].weight``)."""
        self.actions = []
        self._applied = False
        current = resource.parse(await asyncio.to_thread(self.client.get, self.ref))
        self._observed = current.generation
        return current

    async def apply(self, decision: Decision, *, epoch: int) -> bool:
        self._applied = await asyncio.to_thread(self._apply, decision, epoch)
        return self._applied

    async def publish(self, result: AnalysisResult) -> None:
        """Write the look's status (and the Events of conditions that turned True)."""
        await asyncio.to_thread(self._publish, result)

    # ------------------------------------------------------------------ in a thread

    def _apply(self, decision: Decision, epoch: int) -> bool:
        for _ in range(self.attempts):
            current = resource.parse(self.client.get(self.ref))
            if current.paused:
                self._say(f"paused: not writing the decision ({decision.action} to {decision.weights})")
                return False
            if next_spec(current.experiment, decision, epoch=epoch, where=f"Experiment {self.ref}") is None:
                return False
            patch = resource.weights_patch(current.spec, decision.weights)
            if self.dry_run:
                self._say(f"would patch spec.variants of Experiment {self.ref}: weights {decision.weights}")
                self._decision_event(current, decision)
                self._scale_losers(current, decision)
                return False
            try:
                written = self.client.patch_spec(self.ref, patch, resource_version=current.resource_version)
            except errors.KubeConflict:
                continue  # changed since our read: read again, decide the write again
            self._say(f"patched spec.variants of Experiment {self.ref}: weights {decision.weights}")
            updated = resource.parse(written)
            self._decision_event(updated, decision)
            self._scale_losers(updated, decision)
            return True
        raise ConflictError(f"Experiment {self.ref}: still conflicting after {self.attempts} attempts; not writing")

    def _publish(self, result: AnalysisResult) -> None:
        for _ in range(self.attempts):
            current = resource.parse(self.client.get(self.ref))
            status = kube_status.build(
                result,
                weights=effective_weights(current),
                epoch=current.generation,
                observed_generation=self._observed or result.epoch,
                paused=current.paused,
                applied=self._applied,
                previous=current.status,
            )
            if self.dry_run:
                self._say(f"would write status of Experiment {self.ref}: phase {status['phase']}")
            else:
                try:
                    self.client.patch_status(self.ref, status, resource_version=current.resource_version)
                except errors.KubeConflict:
                    continue
            if not current.paused:
                for c in kube_status.turned_true(status["conditions"], current.status):
                    self._event(current, c["type"], c["message"], warning=True)
            return
        raise ConflictError(f"Experiment {self.ref}: status still conflicting after {self.attempts} attempts")

    def _decision_event(self, obj: ExperimentResource, decision: Decision) -> None:
        reason = DECISION_EVENTS.get(decision.action)
        if reason is not None:
            self._event(obj, reason, decision.reason, warning=decision.action == "rollback")

    def _scale_losers(self, obj: ExperimentResource, decision: Decision) -> None:
        if decision.action != "promote" or not obj.experiment.analysis.scale_down_losers:
            return
        for v in obj.experiment.variants:
            if v.deployment is None or decision.weights.get(v.name, 0) > 0:
                continue
            if self.dry_run:
                self._say(f"would scale deployment {obj.namespace}/{v.deployment} to 0 (variant {v.name} lost)")
                continue
            if self.client.get_scale(obj.namespace, v.deployment) == 0:
                continue
            self.client.scale(obj.namespace, v.deployment, 0)
            self._say(f"scaled deployment {obj.namespace}/{v.deployment} to 0 (variant {v.name} lost)")
            self._event(obj, "ScaledDown", f"deployment {v.deployment} of variant {v.name} scaled to 0 after promotion")

    def _event(self, obj: ExperimentResource, reason: str, message: str, *, warning: bool = False) -> None:
        if self.dry_run:
            self._say(f"would create Event {reason}: {message}")
            return
        self.client.create_event(_object_ref(obj), reason=reason, message=message, warning=warning)
        self.actions.append(f"Event {reason}")

    def _say(self, line: str) -> None:
        self.actions.append(line)
        if self.dry_run:
            self.out.write(f"dry run: {line}\n")
            self.out.flush()


def effective_weights(obj: ExperimentResource) -> dict[str, float]:
    """The weights the routers serve, in percent, from the spec as stored."""
    e = obj.experiment
    return {v.name: round(w * 100, 2) for v, w in zip(e.variants, e.weights)}


def _object_ref(obj: ExperimentResource) -> dict[str, Any]:
    meta = {"name": obj.name, "namespace": obj.namespace, "uid": obj.uid, "resourceVersion": obj.resource_version}
    return {"metadata": meta}
