"""`abrouter analyze --experiment NS/NAME --apply`: decisions through the API, end to end.

Real Redis holds the aggregates (seeded as the router writes them), our API server holds
the Experiment, and the CLI runs through argparse as a user would start it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from abrouter.analysis import commands
from abrouter.analysis.sinks import kube_pending
from abrouter.contract import keys
from tests.kube.apiserver import PLURAL, KubeApiServer
from tests.kube.conftest import LOSING, NAMESPACE, WINNING, events, experiment_object, run, stored, weights_of


def json_out(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_promote_writes_weights_status_and_an_event(
    kube_api: KubeApiServer, experiment_name: str, seed: Any, analyze: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name))
    seed(WINNING)

    assert analyze("--apply", "--json") == 0
    (result,) = json_out(capsys)
    assert result["decision"]["action"] == "promote", result["decision"]["reason"]
    assert {v["name"]: (v["units"], v["exposures"]) for v in result["variants"]} == {
        "control": (20_000, 20_000),
        "candidate": (20_000, 20_000),
    }

    obj = stored(kube_api, experiment_name)
    assert weights_of(obj) == {"control": 0.0, "candidate": 100.0}
    assert obj["metadata"]["generation"] == 2
    status = obj["status"]
    assert status["phase"] == "Promoted" and status["winner"] == "candidate"
    assert status["epoch"] == 2 and status["weights"] == {"control": 0.0, "candidate": 100.0}
    assert status["lastDecision"]["action"] == "promote" and status["lastDecision"]["applied"] is True
    assert "\n" not in status["lastDecision"]["reason"]
    arms = {a["name"]: a for a in status["arms"]}
    assert arms["control"]["units"] == 20_000 and arms["control"]["exposures"] == 20_000
    assert arms["candidate"]["mean"] == pytest.approx(0.065) and arms["candidate"]["lift"] == pytest.approx(0.3)
    assert arms["candidate"]["sequentialP"] < 0.05
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["observedGeneration"] == 1
    assert conditions["SampleRatioMismatch"]["status"] == "False"
    assert conditions["GuardrailBreached"]["status"] == "False"
    assert events(kube_api) == ["Promoted"]
    assert kube_api.pruned == []  # every field the analyzer writes is in the CRD's schema

    assert analyze("--apply") == 0  # idempotent: already promoted, no new epoch, no new Event
    assert stored(kube_api, experiment_name)["metadata"]["generation"] == 2
    assert events(kube_api) == ["Promoted"]


def test_rollback_writes_weights_status_and_a_warning_event(
    kube_api: KubeApiServer, experiment_name: str, seed: Any, analyze: Any
) -> None:
    kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name))
    seed(LOSING)
    assert analyze("--apply") == 0
    obj = stored(kube_api, experiment_name)
    assert weights_of(obj) == {"control": 100.0, "candidate": 0.0}
    assert obj["status"]["phase"] == "RolledBack"
    (event,) = kube_api.list("events", NAMESPACE)
    assert event["reason"] == "RolledBack" and event["type"] == "Warning"

    assert analyze("--apply") == 0  # the next look finds the control at 100% ("stop"): still rolled back
    status = stored(kube_api, experiment_name)["status"]
    assert status["lastDecision"]["action"] == "stop" and status["phase"] == "RolledBack"
    assert status["lastApplied"]["action"] == "rollback" and status["summary"]["reason"].startswith("rollback: ")


def test_a_promotion_scales_the_losers_deployment_to_zero(
    kube_api: KubeApiServer, experiment_name: str, seed: Any, analyze: Any
) -> None:
    obj = experiment_object(experiment_name)
    for v, deployment in zip(obj["spec"]["variants"], ("model-a", "model-b")):
        v["deployment"] = deployment
        kube_api.put("deployments", NAMESPACE, {"metadata": {"name": deployment}, "spec": {"replicas": 3}})
    obj["spec"]["analysis"]["scale_down_losers"] = True
    kube_api.put(PLURAL, NAMESPACE, obj)
    seed(WINNING)

    assert analyze("--apply") == 0
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in kube_api.list("deployments", NAMESPACE)}
    assert replicas == {"model-a": 0, "model-b": 3}
    assert events(kube_api) == ["Promoted", "ScaledDown"]


def test_a_409_is_retried_from_a_fresh_read_and_nothing_is_lost(
    kube_api: KubeApiServer, experiment_name: str, seed: Any, analyze: Any
) -> None:
    kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name))
    seed(WINNING)

    def someone_labels_it() -> None:  # another writer, between the analyzer's read and its write
        current = stored(kube_api, experiment_name)
        current["metadata"]["labels"] = {"team": "recsys"}
        kube_api.put(PLURAL, NAMESPACE, current)

    kube_api.before_next_write(someone_labels_it)
    assert analyze("--apply") == 0

    obj = stored(kube_api, experiment_name)
    assert obj["metadata"]["labels"] == {"team": "recsys"}
    assert weights_of(obj) == {"control": 0.0, "candidate": 100.0}
    assert obj["metadata"]["generation"] == 2  # one decision, written once
    assert obj["status"]["phase"] == "Promoted"
    spec_patches = [p for m, p in kube_api.requests if m == "PATCH" and p.endswith(experiment_name)]
    assert len(spec_patches) == 3  # the 409, the retry, then the annotation of the unfinished decision removed
    assert kube_pending.ANNOTATION not in obj["metadata"].get("annotations", {})


def test_a_person_changing_the_weights_meanwhile_is_not_overwritten(
    kube_api: KubeApiServer, experiment_name: str, seed: Any, analyze: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name))
    seed(WINNING)

    def kubectl_edit() -> None:
        current = stored(kube_api, experiment_name)
        current["spec"]["variants"][1]["weight"] = 10
        kube_api.put(PLURAL, NAMESPACE, current)

    kube_api.before_next_write(kubectl_edit)
    assert analyze("--apply") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "the weights changed since the analysis" in err
    assert weights_of(stored(kube_api, experiment_name)) == {"control": 50, "candidate": 10}


@pytest.mark.parametrize(
    ("resource", "verbs", "message"),
    [
        ("experiments", ("get", "list", "watch"), "cannot patch experiments.abrouter.io in namespace"),
        ("experiments/status", ("get",), "cannot patch experiments.abrouter.io/status in namespace"),
    ],
)
def test_a_missing_verb_is_a_one_line_error_naming_verb_and_resource(
    kube_api: KubeApiServer,
    experiment_name: str,
    seed: Any,
    analyze: Any,
    capsys: pytest.CaptureFixture[str],
    resource: str,
    verbs: tuple[str, ...],
    message: str,
) -> None:
    kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name))
    seed(WINNING)
    kube_api.allow(resource, *verbs)
    assert analyze("--apply") != 0
    (line,) = capsys.readouterr().err.splitlines()
    assert message in line and f"the analyzer's Role needs the verb patch on {resource}" in line


def test_paused_writes_status_only(
    kube_api: KubeApiServer, experiment_name: str, seed: Any, analyze: Any, redis_url: str
) -> None:
    kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name, paused=True))
    seed(WINNING)
    assert analyze("--apply") == 0
    obj = stored(kube_api, experiment_name)
    assert weights_of(obj) == {"control": 50, "candidate": 50} and obj["metadata"]["generation"] == 1
    assert obj["status"]["phase"] == "Paused"
    assert obj["status"]["lastDecision"]["action"] == "promote"  # what it would have done
    assert obj["status"]["lastDecision"]["applied"] is False
    assert events(kube_api) == []
    client = redis.Redis.from_url(redis_url)
    try:
        (entry,) = client.xrange(keys.Keys(experiment_name).decisions)
    finally:
        client.close()
    assert json.loads(entry[1][b"decision"])["applied"] is False


@pytest.mark.parametrize("flags", [("--apply", "--dry-run"), ("--dry-run",)])
def test_dry_run_prints_what_it_would_do_and_writes_nothing(
    kube_api: KubeApiServer,
    experiment_name: str,
    seed: Any,
    analyze: Any,
    capsys: pytest.CaptureFixture[str],
    flags: tuple[str, ...],
) -> None:
    before = kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name))
    seed(WINNING)
    assert analyze(*flags) == 0
    out = capsys.readouterr().out
    assert "dry run: would patch spec.variants" in out and "'candidate': 100.0" in out
    assert "dry run: would create Event Promoted" in out
    assert "dry run: would write status" in out
    assert stored(kube_api, experiment_name) == before
    assert events(kube_api) == []
    assert not [m for m, _ in kube_api.requests if m != "GET"]


def test_an_invalid_spec_is_exit_code_2_naming_the_field(
    kube_api: KubeApiServer, experiment_name: str, analyze: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = experiment_object(experiment_name)
    obj["spec"]["variants"][1]["name"] = "control"  # valid for the schema: only the parser sees it
    kube_api.put(PLURAL, NAMESPACE, obj)
    assert analyze("--apply") == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "spec.variants[1].name: duplicate name 'control'" in line


def test_flags_that_need_experiment_are_rejected(analyze: Any) -> None:
    with pytest.raises(commands.InputError, match="need --experiment"):
        run(["analyze", "--config", "x.yaml", "--dry-run"])


@pytest.mark.parametrize(
    ("user", "whose"),
    [
        ("system:serviceaccount:abrouter-test:abrouter-analyzer", "ServiceAccount abrouter-test/abrouter-analyzer"),
        ("alice@example.com", "the kubeconfig's context"),  # a person's credentials: the context's namespace
    ],
)
def test_a_namespace_outside_the_role_is_reported_as_a_wrong_namespace(
    kube_api: KubeApiServer, kubeconfig: Path, redis_url: str, capsys: pytest.CaptureFixture[str], user: str, whose: str
) -> None:
    kube_api.role_namespaces = {NAMESPACE}  # a namespaced Role, as k8s/base/rbac.yaml binds it
    kube_api.user = user
    argv = ["analyze", "--experiment", "elsewhere/recsys-v2", "--kubeconfig", str(kubeconfig)]
    assert run([*argv, "--redis-url", redis_url, "--apply"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        f"forbidden: cannot get experiments.abrouter.io in namespace elsewhere, but the analyzer's credentials "
        f"({whose}) belong to namespace {NAMESPACE}: is elsewhere the right namespace?"
    ) in line, line
    assert "needs a Role in elsewhere with the verb get on experiments" in line


def test_a_missing_experiment_is_not_reported_as_a_missing_crd(
    kube_api: KubeApiServer, kubeconfig: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["analyze", "--experiment", f"{NAMESPACE}/nosuch", "--kubeconfig", str(kubeconfig)]
    assert run([*argv, "--redis-url", redis_url]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert f"no Experiment nosuch in namespace {NAMESPACE}; `kubectl get experiments -A` lists them all" in line
    assert "CRD" not in line


def test_analyze_help_says_where_the_kubernetes_credentials_come_from(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "else $KUBECONFIG, else ~/.kube/config" in text
    assert "Outside the cluster" in text
