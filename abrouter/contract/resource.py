"""The ``Experiment`` custom resource (abrouter.io/v1alpha1), read into the experiment model. Pure.

An object is ``metadata`` (kept by the API server), ``spec`` (owned by people: ``kubectl
edit`` / ``apply``; the analyzer changes only ``spec.variants[*].weight``) and ``status``
(owned by the analyzer, written through the status subresource). ``spec`` is the
experiment model of `abrouter.contract.experiment.parse` plus ``paused``; the name is
``metadata.name`` unless ``spec.name`` is set.

The epoch is ``metadata.generation``, never a field of the spec. The API server raises
the generation on every change of ``spec`` and on nothing else (status and metadata
writes leave it alone), so a person who edits the weights with ``kubectl edit`` moves
the epoch without keeping a counter, the analyzer's weight patch moves it the same way,
and every replica that reads the same object version derives the same number without
talking to the others. A change of spec that keeps the weights (say ``paused``) also
opens a new epoch: a stratum more for the analyzer, never a wrong one. A spec that
carries ``epoch`` is rejected, because two counters would disagree. Deleting and
recreating the object restarts the generation at 1: the routers refuse an epoch going
backwards and keep serving until restarted, since a new object is a new experiment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from abrouter.contract import experiment as model
from abrouter.contract.fields import ConfigError

#: Keys of ``spec`` that belong to the resource, not to the experiment model.
RESOURCE_KEYS = ("paused",)


@dataclass(frozen=True)
class ExperimentResource:
    namespace: str
    #: ``metadata.name`` (the experiment's name unless ``spec.name`` overrides it).
    name: str
    resource_version: str
    generation: int
    experiment: model.Experiment
    #: ``spec.paused``: the analyzer writes nothing but ``status``.
    paused: bool
    #: ``spec`` as stored, so a weights patch keeps every field a person wrote.
    spec: Mapping[str, Any] = field(repr=False)
    status: Mapping[str, Any] = field(default_factory=dict, repr=False)
    uid: str = ""
    #: ``metadata.annotations`` (the analyzer's unfinished decision is one of them).
    annotations: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse(obj: Any) -> ExperimentResource:
    """Validate an Experiment object; a `ConfigError` names the field (``spec.variants[1].weight``)."""
    if not isinstance(obj, Mapping):
        raise ConfigError("", f"an Experiment must be a mapping, got {type(obj).__name__}")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        raise ConfigError("metadata.name", "is required")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ConfigError("spec", f"must be a mapping, got {'null' if spec is None else type(spec).__name__}")
    if "epoch" in spec:
        raise ConfigError("spec.epoch", "is derived from metadata.generation on a resource; remove it")
    paused = spec.get("paused", False)
    if not isinstance(paused, bool):
        raise ConfigError("spec.paused", f"must be true or false, got {type(paused).__name__}")
    generation = meta.get("generation", 1)
    if isinstance(generation, bool) or not isinstance(generation, int) or not 1 <= generation <= model.MAX_EPOCH:
        raise ConfigError("metadata.generation", f"must be an integer from 1 to {model.MAX_EPOCH}, got {generation!r}")
    fields = {k: v for k, v in spec.items() if k not in RESOURCE_KEYS}
    fields.setdefault("name", meta["name"])
    try:
        experiment = model.parse(fields)
    except ConfigError as exc:
        raise ConfigError(f"spec.{exc.path}" if exc.path else "spec", exc.message) from None
    status = obj.get("status")
    annotations = meta.get("annotations")
    return ExperimentResource(
        namespace=str(meta.get("namespace", "")),
        name=str(meta["name"]),
        resource_version=str(meta.get("resourceVersion", "")),
        generation=generation,
        experiment=replace(experiment, epoch=generation),
        paused=paused,
        spec=spec,
        status=status if isinstance(status, Mapping) else {},
        uid=str(meta.get("uid", "")),
        annotations=annotations if isinstance(annotations, Mapping) else {},
    )


def weights_patch(spec: Mapping[str, Any], weights: Mapping[str, float]) -> dict[str, Any]:
    """The merge-patch of ``spec`` that sets `weights` (percent per variant name).

    A merge-patch replaces a list whole, so the patch carries every variant as stored,
    with only ``weight`` changed (and ``shadow`` dropped from a shadow given a weight):
    one write, the whole decision or none of it.
    """
    variants = [dict(v) for v in spec.get("variants") or []]
    names = {v.get("name") for v in variants}
    unknown = sorted(set(weights) - names)
    if unknown:
        raise ConfigError("spec.variants", f"unknown variant(s) {unknown}")
    for v in variants:
        if v.get("name") in weights:
            v["weight"] = weights[v["name"]]
            if v.get("shadow") and v["weight"] > 0:  # [shadow] given traffic, a shadow goes live (`with_weights`)
                v.pop("shadow")
                v.pop("shadow_percent", None)
    return {"variants": variants}
