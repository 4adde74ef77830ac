"""A decision through the Kubernetes API is whole or nothing (issue 19, item 9).

The weight patch carries the intent (`sinks.kube_pending`); when a later step fails (here
a Role without ``create events``, or without ``patch experiments/status``: real 403s from
the API test server), the look says what it applied, and the next look, once the Role is
fixed, finishes it: history, Events, scale-down, status, each exactly once.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from abrouter.analysis.sinks import kube_pending
from abrouter.contract import history as fmt
from abrouter.contract import keys
from tests.kube.apiserver import PLURAL, KubeApiServer
from tests.kube.conftest import LOSING, NAMESPACE, WINNING, events, experiment_object, stored, weights_of

PROMOTED = {"control": 0.0, "candidate": 100.0}


def with_deployments(kube_api: KubeApiServer, name: str) -> None:
    obj = experiment_object(name)
    for v, deployment in zip(obj["spec"]["variants"], ("model-a", "model-b")):
        v["deployment"] = deployment
        kube_api.put("deployments", NAMESPACE, {"metadata": {"name": deployment}, "spec": {"replicas": 3}})
    obj["spec"]["analysis"]["scale_down_losers"] = True
    kube_api.put(PLURAL, NAMESPACE, obj)


def replicas(kube_api: KubeApiServer) -> dict[str, int]:
    return {d["metadata"]["name"]: d["spec"]["replicas"] for d in kube_api.list("deployments", NAMESPACE)}


def decisions(redis_url: str, name: str) -> list[tuple[str, bool]]:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.xrange(keys.Keys(name).decisions)
    finally:
        client.close()
    return [(e.action, e.applied) for e in (fmt.decode(fields[b"decision"]) for _, fields in raw)]


def annotations(kube_api: KubeApiServer, name: str) -> dict[str, str]:
    return dict(stored(kube_api, name)["metadata"].get("annotations") or {})


def test_an_event_refused_after_the_weights_moved_is_finished_by_the_next_look(
    kube_api: KubeApiServer,
    experiment_name: str,
    seed: Any,
    analyze: Any,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with_deployments(kube_api, experiment_name)
    seed(WINNING)
    kube_api.allow("events")  # the analyzer's Role lacks `create events`

    assert analyze("--apply") == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "applied promote to control 0%/candidate 100% (weights written at generation 2)" in line
    assert "the analyzer's Role needs the verb create on events" in line and "the next look finishes it" in line
    obj = stored(kube_api, experiment_name)
    assert weights_of(obj) == PROMOTED  # the one write that happened
    assert kube_pending.of(annotations(kube_api, experiment_name)) is not None
    assert events(kube_api) == [] and replicas(kube_api) == {"model-a": 3, "model-b": 3}

    kube_api.roles.pop("events")  # the Role is fixed
    assert analyze("--apply") == 0
    obj = stored(kube_api, experiment_name)
    assert sorted(events(kube_api)) == ["Promoted", "ScaledDown"]
    assert replicas(kube_api) == {"model-a": 0, "model-b": 3}
    assert obj["status"]["phase"] == "Promoted" and obj["status"]["winner"] == "candidate"
    assert kube_pending.ANNOTATION not in annotations(kube_api, experiment_name)
    assert obj["metadata"]["generation"] == 2
    assert decisions(redis_url, experiment_name)[0] == ("promote", True)
    assert [d for d in decisions(redis_url, experiment_name) if d[1]] == [("promote", True)]

    assert kube_api.pruned == []  # the annotation and every status field are stored as written
    assert analyze("--apply") == 0  # nothing left to finish: nothing twice
    assert sorted(events(kube_api)) == ["Promoted", "ScaledDown"]


def test_a_status_refused_after_the_events_is_finished_without_repeating_them(
    kube_api: KubeApiServer,
    experiment_name: str,
    seed: Any,
    analyze: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with_deployments(kube_api, experiment_name)
    seed(WINNING)
    kube_api.allow("experiments/status", "get")

    assert analyze("--apply") == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "applied promote" in line and "needs the verb patch on experiments/status" in line
    assert sorted(events(kube_api)) == ["Promoted", "ScaledDown"]
    assert "status" not in stored(kube_api, experiment_name)

    kube_api.roles.pop("experiments/status")
    assert analyze("--apply") == 0
    obj = stored(kube_api, experiment_name)
    assert obj["status"]["phase"] == "Promoted"
    assert obj["status"]["lastDecision"]["action"] == "promote"
    assert sorted(events(kube_api)) == ["Promoted", "ScaledDown"]  # each once, though redone
    assert kube_pending.ANNOTATION not in annotations(kube_api, experiment_name)


def test_a_loser_given_traffic_again_by_hand_is_not_scaled_down_when_finishing(
    kube_api: KubeApiServer,
    experiment_name: str,
    seed: Any,
    analyze: Any,
) -> None:
    promoted_without_events(kube_api, experiment_name, seed, analyze)

    obj = stored(kube_api, experiment_name)  # a person undoes the promotion and pauses
    obj["spec"]["variants"][0]["weight"], obj["spec"]["variants"][1]["weight"] = 50, 50
    obj["spec"]["paused"] = True
    kube_api.put(PLURAL, NAMESPACE, obj)
    kube_api.roles.pop("events")

    assert analyze("--apply") == 0
    assert events(kube_api) == ["Promoted"]  # it did happen
    assert replicas(kube_api) == {"model-a": 3, "model-b": 3}  # model-a serves again
    assert kube_pending.ANNOTATION not in annotations(kube_api, experiment_name)
    assert stored(kube_api, experiment_name)["status"]["phase"] == "Paused"


def test_while_paused_the_scale_down_waits_and_happens_on_resume(
    kube_api: KubeApiServer,
    experiment_name: str,
    seed: Any,
    analyze: Any,
) -> None:
    promoted_without_events(kube_api, experiment_name, seed, analyze)
    obj = stored(kube_api, experiment_name)
    obj["spec"]["paused"] = True
    kube_api.put(PLURAL, NAMESPACE, obj)
    kube_api.roles.pop("events")

    assert analyze("--apply") == 0
    assert replicas(kube_api) == {"model-a": 3, "model-b": 3}
    assert kube_pending.of(annotations(kube_api, experiment_name)) is not None  # still unfinished

    obj = stored(kube_api, experiment_name)
    obj["spec"]["paused"] = False
    kube_api.put(PLURAL, NAMESPACE, obj)
    assert analyze("--apply") == 0
    assert replicas(kube_api) == {"model-a": 0, "model-b": 3}
    assert sorted(events(kube_api)) == ["Promoted", "ScaledDown"]
    assert kube_pending.ANNOTATION not in annotations(kube_api, experiment_name)


def test_a_rollback_whose_warning_event_was_refused_is_finished_by_the_next_look(
    kube_api: KubeApiServer, experiment_name: str, seed: Any, analyze: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name))
    seed(LOSING)
    kube_api.allow("events")
    assert analyze("--apply") == 1
    assert "applied rollback to control 100%/candidate 0%" in capsys.readouterr().err
    size = len(annotations(kube_api, experiment_name)[kube_pending.ANNOTATION])
    assert size < 4096  # a few KB at most

    kube_api.roles.pop("events")
    assert analyze("--apply") == 0
    (event,) = kube_api.list("events", NAMESPACE)
    assert event["reason"] == "RolledBack" and event["type"] == "Warning"
    status = stored(kube_api, experiment_name)["status"]
    assert status["phase"] == "RolledBack" and status["lastApplied"]["action"] == "rollback"
    assert status["summary"]["reason"].startswith("rollback: ")
    assert status["lastDecision"]["action"] == "stop"  # the look after finds the control at 100%: still RolledBack


def promoted_without_events(kube_api: KubeApiServer, experiment_name: str, seed: Any, analyze: Any) -> None:
    """A winning candidate promoted by a look whose Events were refused (it exits 1, unfinished)."""
    with_deployments(kube_api, experiment_name)
    seed(WINNING)
    kube_api.allow("events")
    assert analyze("--apply") == 1
