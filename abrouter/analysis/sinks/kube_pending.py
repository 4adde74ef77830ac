"""A decision applied but not finished: what the weight patch records on the Experiment. Pure.

A decision is several writes that no API makes atomic: the weights (``spec``), the look's
entry in the history stream (Redis), the decision's Event, at a promotion the losers'
scale-down and its ``ScaledDown`` Events, and ``status``. So the first write carries the
whole intent: the merge-patch that moves the weights also sets the annotation
`ANNOTATION` to a `Pending` (the decision and its encoded history entry), in one write
that happens whole or not at all. Every later step is safe to redo:

- an Event's name is derived from the decision (`event_name`), so creating it again is
  the API's 409 AlreadyExists, which the sink takes as done;
- a Deployment already at 0 replicas is not scaled again;
- the history entry is appended unless the stream already holds it;
- ``status`` is a merge-patch of the decision's fields.

The annotation is removed last. A look that finds it finishes that decision before it
makes a new one; a look that fails midway says what it had applied, and the next look
finishes it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

ANNOTATION = "abrouter.io/unfinished-decision"
#: Event names are DNS subdomains of at most 253 characters.
_NAME_PART = 200


@dataclass(frozen=True)
class Pending:
    """A decision whose weights are written; the other steps may not be."""

    action: str
    #: The decision's one-line reason.
    reason: str
    #: Percent per variant, as written to ``spec.variants``.
    weights: dict[str, float]
    #: The generation (epoch) the decision was made under; the weight patch raised it by one.
    epoch: int
    #: When the look that decided it ran (seconds since the epoch); names its Events.
    at: float
    #: The decision's entry of the history stream, encoded (`abrouter.contract.history`).
    entry: str

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def applied(self) -> str:
        """``promote to {...} (written at generation 3)``: what is already in effect."""
        return f"{self.action} to {_weights_text(self.weights)} (weights written at generation {self.epoch + 1})"


def decode(text: str) -> Pending | None:
    """The `Pending` an annotation holds, or None when it is not one (edited by hand)."""
    try:
        doc = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(doc, Mapping):
        return None
    return _pending(doc)


def _pending(doc: Mapping[str, Any]) -> Pending | None:
    weights = doc.get("weights")
    epoch, at = doc.get("epoch"), doc.get("at")
    if not isinstance(weights, Mapping) or not all(isinstance(w, int | float) for w in weights.values()):
        return None
    if not isinstance(epoch, int) or not isinstance(at, int | float) or not math.isfinite(at):
        return None
    if not all(isinstance(doc.get(k), str) for k in ("action", "reason", "entry")):
        return None
    return Pending(
        action=doc["action"],
        reason=doc["reason"],
        weights={str(k): float(v) for k, v in weights.items()},
        epoch=epoch,
        at=float(at),
        entry=doc["entry"],
    )


def of(annotations: Mapping[str, str]) -> Pending | None:
    text = annotations.get(ANNOTATION)
    return decode(text) if isinstance(text, str) else None


def event_name(experiment: str, uid: str, reason: str, *key: object) -> str:
    """A name that is the same each time the same step is redone, and differs otherwise.

    ``recsys-v2.promoted.3f9a0c21b7``: the Experiment, the Event's reason, and a digest of
    the object's uid, the reason and `key` (the decision's time, a variant, ...).
    """
    digest = hashlib.sha256("|".join(map(str, (uid, reason, *key))).encode()).hexdigest()[:10]
    return f"{experiment[:_NAME_PART].rstrip('-.')}.{reason.lower()}.{digest}"


def _weights_text(weights: Mapping[str, float]) -> str:
    return "/".join(f"{name} {w:g}%" for name, w in weights.items())
