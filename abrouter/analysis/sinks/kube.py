"""`KubeSink`: decisions written to an ``Experiment`` resource through the Kubernetes API.

Who writes what, so that a person's ``kubectl edit`` / ``kubectl apply`` and the analyzer
never fight:

- **people own ``spec``**. The analyzer changes one thing in it, the weights it decides:
  a merge-patch of ``spec.variants`` that copies every variant as stored and changes only
  ``weight``, guarded by the ``metadata.resourceVersion`` it read. The routers follow
  ``spec``, so the weights they serve are whatever was written last, by either.
- **the analyzer owns ``status``**, written through the status subresource (which cannot
  touch ``spec``): effective weights and epoch, phase, the last decision and its reason,
  per-arm numbers and the conditions (`sinks.kube_status`), and the witness of what the
  look saw in Redis (``status.witness``, `abrouter.analysis.witness`).
- the epoch is ``metadata.generation`` (`abrouter.contract.resource`): the weight patch
  raises it, and so does a person's edit of the spec. A decision made under another
  generation than the current one is not written (`sinks.policy.next_spec` raises
  `ConflictError`): someone changed the spec since the look, and the next look decides
  on the new one.
- a 409 (the object changed between our read and our write: a status write, a label,
  anything) is retried from a fresh read, up to `attempts` times.
- a decision is whole or nothing (`sinks.kube_pending`): the weight patch also writes the
  annotation ``abrouter.io/unfinished-decision``, the whole intent in the same write;
  then the history entry, the Events, the scale-down and ``status`` follow, each safe to
  redo, and the annotation is removed last. A look that finds it finishes that decision
  first (`finish`), so a failure midway (a Role without ``create events``) leaves
  nothing half done once it is fixed.
- ``spec.paused: true`` stops every write but ``status`` (phase Paused, the decision that
  would have been made): no weights, no Events, no scaling.
- Events on the Experiment: ``Ramped``, ``Promoted``, ``RolledBack`` when weights are
  written, ``SampleRatioMismatch`` and ``GuardrailBreached`` when the condition turns
  True, ``ScaledDown`` when a loser's Deployment is scaled to 0.
- after a promotion, with ``analysis.scale_down_losers: true``, every variant at weight 0
  (in the decision and in the spec as it is then) that names a ``deployment`` is scaled
  to 0 replicas through the scale subresource; not while ``spec.paused`` (the decision
  then stays unfinished until the Experiment is resumed).
- `dry_run`: every write is printed as ``would ...`` instead of made.

The client is synchronous; every call runs in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from abrouter.analysis.analyzer import AnalysisResult
from abrouter.analysis.decision import Decision
from abrouter.analysis.errors import ConflictError
from abrouter.analysis.sinks import kube_pending, kube_status
from abrouter.analysis.sinks.kube_pending import Pending
from abrouter.analysis.sinks.policy import next_spec
from abrouter.analysis.witness import Seen, to_status
from abrouter.contract import resource
from abrouter.contract.resource import ExperimentResource
from abrouter.kube import errors
from abrouter.kube.client import KubeClient, Ref

DECISION_EVENTS = {"ramp": "Ramped", "promote": "Promoted", "rollback": "RolledBack"}
CONDITION_EVENTS = ("SampleRatioMismatch", "GuardrailBreached")
#: Builds the status to write from the object as it is now.
StatusOf = Callable[[ExperimentResource], dict[str, Any]]


class KubeSink:
    """Writes a look's decision to an Experiment resource: `apply`, then `publish`; `finish` first."""

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
        #: The decision whose weights are written and whose other steps may not be (`kube_pending`).
        self.pending: Pending | None = None
        self._applied = False
        #: The generation of the spec the look analyses (`read`): the conditions' observedGeneration.
        self._observed = 0

    async def read(self) -> ExperimentResource:
        """The resource now; a bad spec raises `ConfigError` naming the field (``spec.variants[0].weight``)."""
        self.actions = []
        self._applied = False
        current = resource.parse(await asyncio.to_thread(self.client.get, self.ref))
        self._observed = current.generation
        self.pending = kube_pending.of(current.annotations)
        return current

    async def apply(self, decision: Decision, *, epoch: int, at: float, entry: str) -> bool:
        """Write the weights and the intent (`kube_pending`) in one patch; True when written.

        `entry` is the look's history entry (encoded, applied), kept in the intent so that
        a later look can append it if this one cannot.
        """
        intent = Pending(
            action=decision.action,
            reason=decision.reason,
            weights=dict(decision.weights),
            epoch=epoch,
            at=at,
            entry=entry,
        )
        self._applied = await asyncio.to_thread(self._apply, decision, intent)
        return self._applied

    async def finish(self) -> bool:
        """Finish `pending` (a decision an earlier look applied): Events, scale-down, status.

        True when it is finished (the annotation removed); False while ``spec.paused``
        holds its scale-down back. The caller appends its history entry first.
        """
        if self.pending is None:
            return True
        pending = self.pending
        return await asyncio.to_thread(self._complete, pending, lambda obj: self._applied_status(obj, pending))

    async def publish(self, result: AnalysisResult, *, witness: Seen | None = None) -> None:
        """Write the look's status (and the Events of conditions that turned True); finish `pending`.

        `witness`: what the look saw (`abrouter.analysis.witness`), kept in ``status.witness``."""
        await asyncio.to_thread(self._publish, result, witness)

    # ------------------------------------------------------------------ in a thread

    def _apply(self, decision: Decision, intent: Pending) -> bool:
        for _ in range(self.attempts):
            current = resource.parse(self.client.get(self.ref))
            if current.paused:
                self._say(f"paused: not writing the decision ({decision.action} to {decision.weights})")
                return False
            if next_spec(current.experiment, decision, epoch=intent.epoch, where=f"Experiment {self.ref}") is None:
                return False
            patch = resource.weights_patch(current.spec, decision.weights)
            if self.dry_run:
                self._say(f"would patch spec.variants of Experiment {self.ref}: weights {decision.weights}")
                self._decision_steps(current, intent)
                return False
            try:
                self.client.patch_spec(
                    self.ref,
                    patch,
                    resource_version=current.resource_version,
                    annotations={kube_pending.ANNOTATION: intent.encode()},
                )
            except errors.KubeConflict:
                continue  # changed since our read: read again, decide the write again
            self._say(f"patched spec.variants of Experiment {self.ref}: weights {decision.weights}")
            self.pending = intent
            return True
        raise ConflictError(f"Experiment {self.ref}: still conflicting after {self.attempts} attempts; not writing")

    def _publish(self, result: AnalysisResult, witness: Seen | None) -> None:
        def status_of(current: ExperimentResource) -> dict[str, Any]:
            status = kube_status.build(
                result,
                weights=effective_weights(current),
                epoch=current.generation,
                observed_generation=self._observed or result.epoch,
                paused=current.paused,
                applied=self._applied,
                previous=current.status,
            )
            return status if witness is None else {**status, "witness": to_status(witness)}

        if self.pending is not None and not self.dry_run:
            self._complete(self.pending, status_of)
        else:
            self._write_status(status_of)

    def _complete(self, pending: Pending, status_of: StatusOf) -> bool:
        """The steps after the weight patch, each safe to redo; the annotation goes last."""
        if self.dry_run:
            self._say(f"would finish the unfinished decision {pending.applied()}")
            return False
        done = self._decision_steps(resource.parse(self.client.get(self.ref)), pending)
        self._write_status(status_of)
        if done:
            self._clear(pending)
            self.pending = None
        return done

    def _write_status(self, status_of: StatusOf) -> None:
        """Condition Events first, then the status that records them: a redo emits each once."""
        for _ in range(self.attempts):
            current = resource.parse(self.client.get(self.ref))
            status = status_of(current)
            if not current.paused:
                for c in kube_status.turned_true(status.get("conditions") or [], current.status):
                    since = _since(current.status, c["type"])
                    self._event(current, c["type"], c["message"], warning=True, key=(current.generation, since))
            if self.dry_run:
                self._say(f"would write status of Experiment {self.ref}: phase {status['phase']}")
                return
            try:
                self.client.patch_status(self.ref, status, resource_version=current.resource_version)
            except errors.KubeConflict:
                continue
            return
        raise ConflictError(f"Experiment {self.ref}: status still conflicting after {self.attempts} attempts")

    def _applied_status(self, obj: ExperimentResource, pending: Pending) -> dict[str, Any]:
        weights = effective_weights(obj)
        return kube_status.applied(
            pending, weights=weights, epoch=obj.generation, paused=obj.paused, previous=obj.status
        )

    def _clear(self, pending: Pending) -> None:
        """Remove the annotation, unless it no longer holds `pending` (then it is not ours to remove)."""
        for _ in range(self.attempts):
            current = resource.parse(self.client.get(self.ref))
            if kube_pending.of(current.annotations) != pending:
                return
            try:
                self.client.patch_spec(
                    self.ref,
                    {},
                    resource_version=current.resource_version,
                    annotations={kube_pending.ANNOTATION: None},
                )
            except errors.KubeConflict:
                continue
            self._say(f"finished the decision {pending.action} of Experiment {self.ref}")
            return
        raise ConflictError(f"Experiment {self.ref}: still conflicting after {self.attempts} attempts")

    def _decision_steps(self, obj: ExperimentResource, pending: Pending) -> bool:
        """The decision's Event, then the scale-down; False while paused holds the scale-down."""
        reason = DECISION_EVENTS.get(pending.action)
        if reason is not None:
            self._event(obj, reason, pending.reason, warning=pending.action == "rollback", key=(pending.at,))
        return self._scale_losers(obj, pending)

    def _scale_losers(self, obj: ExperimentResource, pending: Pending) -> bool:
        if pending.action != "promote" or not obj.experiment.analysis.scale_down_losers:
            return True
        # The spec as it is now: a person may have given a loser traffic again since the patch.
        # A dry run has patched nothing, so it takes the decision's weights as the spec's.
        serving = dict(pending.weights) if self.dry_run else effective_weights(obj)
        losers = [
            v
            for v in obj.experiment.variants
            if v.deployment is not None and pending.weights.get(v.name, 0) <= 0 and serving.get(v.name, 0) <= 0
        ]
        if losers and obj.paused:
            self._say(f"paused: not scaling down {', '.join(str(v.deployment) for v in losers)} yet")
            return False
        for v in losers:
            self._scale_to_zero(obj, v.name, str(v.deployment), pending)
        return True

    def _scale_to_zero(self, obj: ExperimentResource, variant: str, deployment: str, pending: Pending) -> None:
        if self.dry_run:
            self._say(f"would scale deployment {obj.namespace}/{deployment} to 0 (variant {variant} lost)")
            return
        if self.client.get_scale(obj.namespace, deployment) != 0:
            self.client.scale(obj.namespace, deployment, 0)
            self._say(f"scaled deployment {obj.namespace}/{deployment} to 0 (variant {variant} lost)")
        message = f"deployment {deployment} of variant {variant} scaled to 0 after promotion"
        self._event(obj, "ScaledDown", message, key=(pending.at, deployment))

    def _event(
        self, obj: ExperimentResource, reason: str, message: str, *, key: tuple[object, ...], warning: bool = False
    ) -> None:
        if self.dry_run:
            self._say(f"would create Event {reason}: {message}")
            return
        name = kube_pending.event_name(obj.name, obj.uid, reason, *key)
        if self.client.create_event(_object_ref(obj), reason=reason, message=message, warning=warning, name=name):
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


def _since(status: Mapping[str, Any], kind: str) -> str:
    """When condition `kind` last changed before now ("" if it never was): one Event per flip."""
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            return str(c.get("lastTransitionTime") or "")
    return ""


def _object_ref(obj: ExperimentResource) -> dict[str, Any]:
    meta = {"name": obj.name, "namespace": obj.namespace, "uid": obj.uid, "resourceVersion": obj.resource_version}
    return {"metadata": meta}
