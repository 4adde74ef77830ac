"""The unfinished decision's annotation and the Event names that make its steps safe to redo. Pure."""

from __future__ import annotations

import re

from abrouter.analysis.sinks import kube_pending
from abrouter.analysis.sinks.kube_pending import Pending

PENDING = Pending("promote", "promote: candidate wins", {"control": 0.0, "candidate": 100.0}, 3, 1.7e9, '{"at":1}')


def test_the_annotation_round_trips_and_anything_else_is_no_decision() -> None:
    annotations = {kube_pending.ANNOTATION: PENDING.encode()}
    assert kube_pending.of(annotations) == PENDING
    assert kube_pending.of({}) is None
    for junk in ("", "not json", "[]", '{"action": "promote"}', PENDING.encode().replace('"epoch":3', '"epoch":"3"')):
        assert kube_pending.of({kube_pending.ANNOTATION: junk}) is None, junk


def test_applied_says_what_is_in_effect() -> None:
    assert PENDING.applied() == "promote to control 0%/candidate 100% (weights written at generation 4)"


def test_event_names_are_stable_per_step_distinct_across_steps_and_valid_names() -> None:
    name = kube_pending.event_name("recsys-v2", "uid-1", "Promoted", 1.7e9)
    assert name == kube_pending.event_name("recsys-v2", "uid-1", "Promoted", 1.7e9)
    others = {
        kube_pending.event_name("recsys-v2", "uid-2", "Promoted", 1.7e9),  # the Experiment recreated
        kube_pending.event_name("recsys-v2", "uid-1", "Promoted", 1.7e9 + 60),  # another decision
        kube_pending.event_name("recsys-v2", "uid-1", "ScaledDown", 1.7e9, "model-a"),
        kube_pending.event_name("recsys-v2", "uid-1", "ScaledDown", 1.7e9, "model-b"),
    }
    assert name not in others and len(others) == 4
    long = kube_pending.event_name("a" * 199 + "-b" * 27, "uid", "SampleRatioMismatch", "")
    for n in (name, long, *others):
        assert len(n) <= 253 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", n), n
