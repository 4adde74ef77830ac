"""What abrouter relies on from the Kubernetes API, asserted through `KubeClient`.

Every test runs against our test server (`tests/kube/apiserver.py`), and against a real
cluster too when ``ABROUTER_TEST_KUBECONFIG`` names a kubeconfig for one with the
Experiment CRD installed (namespace ``ABROUTER_TEST_NAMESPACE``, default ``default``);
otherwise the cluster runs are skipped. Tests that need to break the server on purpose
(RBAC, a wrong token) run against ours only: on a real cluster they would need other
credentials.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from abrouter.kube import errors
from abrouter.kube.client import GROUP, PLURAL, VERSION, KubeClient, Ref
from tests.kube.apiserver import KubeApiServer
from tests.kube.conftest import NAMESPACE, experiment_object

CLUSTER = os.environ.get("ABROUTER_TEST_KUBECONFIG")


@dataclass
class Target:
    client: KubeClient
    namespace: str
    server: KubeApiServer | None
    created: list[str] = field(default_factory=list)

    def create(self, **spec_fields: Any) -> dict[str, Any]:
        name = f"contract-{secrets.token_hex(4)}"
        obj = experiment_object(name, **spec_fields)
        obj["metadata"]["namespace"] = self.namespace
        obj["status"] = {"phase": "Promoted"}  # must be ignored: status has its own subresource
        created = self.client.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, obj)
        self.created.append(name)
        return dict(created)

    def ref(self, obj: dict[str, Any]) -> Ref:
        return Ref(self.namespace, obj["metadata"]["name"])


@pytest.fixture(params=["ours", "cluster"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "cluster":
        if not CLUSTER:
            pytest.skip("ABROUTER_TEST_KUBECONFIG is not set: no real cluster to check the contract against")
        t = Target(
            KubeClient.from_config(Path(CLUSTER), role="analyzer"),
            os.environ.get("ABROUTER_TEST_NAMESPACE", "default"),
            None,
        )
    else:
        server = KubeApiServer().start()
        request.addfinalizer(server.close)
        t = Target(KubeClient.from_config(server.kubeconfig(tmp_path / "kc"), role="analyzer"), NAMESPACE, server)
    try:
        yield t
    finally:
        for name in t.created:
            try:
                t.client.custom.delete_namespaced_custom_object(GROUP, VERSION, t.namespace, PLURAL, name)
            except Exception:  # best effort: the object may be gone already
                pass
        t.client.close()


def ours(target: Target) -> KubeApiServer:
    if target.server is None:
        pytest.skip("needs a hook of our test server")
    return target.server


def test_create_starts_at_generation_1_and_ignores_status(target: Target) -> None:
    obj = target.create()
    assert obj["metadata"]["generation"] == 1
    assert obj["metadata"]["resourceVersion"].isdigit()
    assert "status" not in target.client.get(target.ref(obj))


def test_a_write_with_a_stale_resource_version_is_409_and_a_fresh_one_bumps_the_generation(target: Target) -> None:
    obj = target.create()
    ref, rv = target.ref(obj), obj["metadata"]["resourceVersion"]
    target.client.patch_status(ref, {"phase": "Running"})  # any write makes `rv` stale
    with pytest.raises(errors.KubeConflict) as caught:
        target.client.patch_spec(ref, {"paused": True}, resource_version=rv)
    assert caught.value.status == 409 and "changed since it was read" in str(caught.value)
    fresh = target.client.get(ref)
    patched = target.client.patch_spec(ref, {"paused": True}, resource_version=fresh["metadata"]["resourceVersion"])
    assert patched["spec"]["paused"] is True
    assert patched["metadata"]["generation"] == 2
    assert int(patched["metadata"]["resourceVersion"]) > int(fresh["metadata"]["resourceVersion"])


def test_the_status_subresource_changes_only_status_and_the_main_resource_ignores_status(target: Target) -> None:
    obj = target.create()
    ref = target.ref(obj)
    body = {"status": {"phase": "Ramping"}, "spec": {"paused": True}}
    after = target.client.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, target.namespace, PLURAL, ref.name, body, _content_type="application/merge-patch+json"
    )
    assert after["status"] == {"phase": "Ramping"}
    assert "paused" not in after["spec"] and after["metadata"]["generation"] == 1

    body = {"status": {"phase": "Promoted"}, "spec": {"paused": True}}
    after = target.client.custom.patch_namespaced_custom_object(
        GROUP, VERSION, target.namespace, PLURAL, ref.name, body, _content_type="application/merge-patch+json"
    )
    assert after["status"] == {"phase": "Ramping"}
    assert after["spec"]["paused"] is True and after["metadata"]["generation"] == 2


def test_a_status_write_leaves_the_generation_alone(target: Target) -> None:
    obj = target.create()
    after = target.client.patch_status(
        target.ref(obj), {"phase": "Running"}, resource_version=obj["metadata"]["resourceVersion"]
    )
    assert after["metadata"]["generation"] == 1
    assert after["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]


def test_custom_resources_refuse_strategic_merge_patch_with_415(target: Target) -> None:
    obj = target.create()
    with pytest.raises(errors.KubeError) as caught:
        target.client._call(
            "patch",
            PLURAL,
            target.ref(obj),
            lambda: target.client.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                target.namespace,
                PLURAL,
                obj["metadata"]["name"],
                {"spec": {"paused": True}},
                _content_type="application/strategic-merge-patch+json",
            ),
        )
    assert caught.value.status == 415


def test_list_carries_a_resource_version_and_a_watch_resumes_after_it(target: Target) -> None:
    obj = target.create()
    ref = target.ref(obj)
    items, listed = target.client.list_experiments(target.namespace)
    assert ref.name in {i["metadata"]["name"] for i in items} and listed.isdigit()
    first = target.client.patch_status(ref, {"phase": "Running"})
    target.client.patch_status(ref, {"phase": "Ramping"})

    def events(since: str) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        for kind, o in target.client.watch(target.namespace, since, timeout_s=2):
            if o["metadata"]["name"] == ref.name:
                seen.append((kind, o.get("status", {}).get("phase")))
            if len(seen) >= 2 or (since != listed and seen):
                target.client.stop_watch()
        return seen

    assert events(listed) == [("MODIFIED", "Running"), ("MODIFIED", "Ramping")]
    assert events(first["metadata"]["resourceVersion"]) == [("MODIFIED", "Ramping")]


def test_a_too_old_resource_version_is_410_inside_a_200_stream(target: Target) -> None:
    target.create()
    if target.server is not None:
        target.server.compact()
        request = urllib.request.Request(
            f"{target.server.url}/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}?watch=true&resourceVersion=1",
            headers={"Authorization": f"Bearer {target.server.token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
            event = json.loads(resp.readline())
        assert event["type"] == "ERROR"
        assert event["object"]["kind"] == "Status" and event["object"]["code"] == 410
    with pytest.raises(errors.KubeGone):
        list(target.client.watch(target.namespace, "1", timeout_s=5))


def test_an_event_created_again_under_its_name_is_409_already_exists_and_a_no_op(target: Target) -> None:
    obj = target.create()
    name = f"{obj['metadata']['name']}.contract.{secrets.token_hex(4)}"
    assert target.client.create_event(obj, reason="Contract", message="first", name=name) is True
    assert target.client.create_event(obj, reason="Contract", message="again", name=name) is False
    mine = [e for e in target.client.list_events(target.namespace) if e["metadata"]["name"] == name]
    assert [e["message"] for e in mine] == ["first"]


def _invalid(target: Target, call: Any) -> errors.KubeError:
    with pytest.raises(errors.KubeError) as caught:
        target.client._call("write", PLURAL, Ref(target.namespace, "x"), call)
    assert caught.value.status == 422, caught.value
    return caught.value


def test_a_spec_against_the_schema_is_422_naming_each_field(target: Target) -> None:
    obj = experiment_object(f"contract-{secrets.token_hex(4)}", slow_request=0.25)
    obj["metadata"]["namespace"] = target.namespace
    obj["spec"]["variants"][1]["weight"] = -5
    obj["spec"]["unit"] = {"header": "X-User-Id", "cookie": "uid"}

    def create() -> Any:
        return target.client.custom.create_namespaced_custom_object(GROUP, VERSION, target.namespace, PLURAL, obj)

    message = str(_invalid(target, create))
    assert "spec.slow_request" in message and "integer,string" in message
    assert "spec.variants[1].weight" in message and "spec.unit" in message
    for good in (30, "250ms", 30.0):  # a whole number sent as 30.0 is an integer to the API server
        obj["spec"] |= {"slow_request": good, "unit": {"header": "X-User-Id"}}
        obj["spec"]["variants"][1]["weight"] = 5
        obj["metadata"]["name"] = f"contract-{secrets.token_hex(4)}"
        target.created.append(create()["metadata"]["name"])


def test_unknown_fields_are_pruned_from_spec_and_status(target: Target) -> None:
    obj = target.create(colour="red")
    assert "colour" not in obj["spec"]
    ref = target.ref(obj)
    fresh = target.client.get(ref)
    variants = [dict(v, shade="blue") for v in fresh["spec"]["variants"]]
    patched = target.client.patch_spec(
        ref, {"variants": variants}, resource_version=fresh["metadata"]["resourceVersion"]
    )
    assert all("shade" not in v for v in patched["spec"]["variants"])
    status = target.client.patch_status(ref, {"phase": "Running", "mood": "good", "lastDecision": {"x": 1}})
    assert status["status"] == {"phase": "Running", "lastDecision": {}}


def test_a_status_against_the_schema_is_422_naming_the_field(target: Target) -> None:
    ref = target.ref(target.create())
    twice = {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}]}
    for status, path in (
        ({"phase": "Winning"}, "status.phase"),
        ({"epoch": 1.5}, "status.epoch"),
        (twice, "status.conditions[1]"),  # a list-type map: one item per type
    ):

        def write(status: dict[str, Any] = status) -> Any:
            return target.client.patch_status(ref, status)

        assert path in str(_invalid(target, write))
    assert "status" not in target.client.get(ref)


def _label(target: Target, ref: Ref, **labels: str) -> None:
    target.client.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        target.namespace,
        PLURAL,
        ref.name,
        {"metadata": {"labels": labels}},
        _content_type="application/merge-patch+json",
    )


def test_a_label_selector_lists_only_the_experiments_it_matches(target: Target) -> None:
    team = f"t{secrets.token_hex(3)}"
    picked = target.create()
    other = target.create()
    for obj, value in ((picked, team), (other, f"{team}-other")):
        _label(target, target.ref(obj), team=value)
    items, _ = target.client.list_experiments(target.namespace, selector=f"team={team}")
    assert [o["metadata"]["name"] for o in items] == [picked["metadata"]["name"]]
    items, _ = target.client.list_experiments(target.namespace, selector=f"team in ({team},{team}-other)")
    assert {o["metadata"]["name"] for o in items} >= {picked["metadata"]["name"], other["metadata"]["name"]}


def test_a_watch_with_a_label_selector_sees_objects_enter_and_leave_the_selection(target: Target) -> None:
    team = f"t{secrets.token_hex(3)}"
    obj = target.create()
    ref = target.ref(obj)
    _, listed = target.client.list_experiments(target.namespace, selector=f"team={team}")
    _label(target, ref, team=team)  # enters the selection
    target.client.patch_status(ref, {"phase": "Running"})  # stays in it
    _label(target, ref, team=f"{team}-other")  # leaves it
    target.client.patch_status(ref, {"phase": "Ramping"})  # outside: not seen
    _label(target, ref, team=team)  # back in
    seen: list[tuple[str, str | None]] = []
    for kind, o in target.client.watch(target.namespace, listed, timeout_s=2, selector=f"team={team}"):
        assert o["metadata"]["name"] == ref.name, "an object the selector never picked was seen"
        seen.append((kind, o.get("status", {}).get("phase")))
        if len(seen) == 4:
            target.client.stop_watch()
    assert seen == [("ADDED", None), ("MODIFIED", "Running"), ("DELETED", "Running"), ("ADDED", "Ramping")]


def test_a_lease_is_created_once_and_replaced_only_from_its_resource_version(target: Target) -> None:
    name = f"contract-{secrets.token_hex(4)}"
    assert target.client.get_lease(target.namespace, name) is None
    body = {"metadata": {"name": name}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    created = target.client.create_lease(target.namespace, body)
    try:
        with pytest.raises(errors.KubeAlreadyExists):
            target.client.create_lease(target.namespace, body)
        stale = created["metadata"]["resourceVersion"]
        renewed = {"metadata": {"name": name, "resourceVersion": stale}, "spec": {"holderIdentity": "a"}}
        after = target.client.replace_lease(target.namespace, renewed)
        assert after["metadata"]["resourceVersion"] != stale
        with pytest.raises(errors.KubeConflict) as caught:
            target.client.replace_lease(target.namespace, {**renewed, "spec": {"holderIdentity": "b"}})
        assert "leases.coordination.k8s.io" in str(caught.value)
        found = target.client.get_lease(target.namespace, name)
        assert found is not None and found["spec"]["holderIdentity"] == "a"
    finally:
        target.client.coordination.delete_namespaced_lease(name, target.namespace)


def test_an_unknown_object_is_404(target: Target) -> None:
    with pytest.raises(errors.KubeNotFound, match="not found"):
        target.client.get(Ref(target.namespace, "no-such-experiment"))


def test_a_missing_or_wrong_token_is_401(target: Target, tmp_path: Path) -> None:
    server = ours(target)
    for token in ("", "wrong"):
        client = KubeClient.from_config(server.kubeconfig(tmp_path / "bad", token=token), role="router")
        with pytest.raises(errors.KubeUnauthorized, match="did not accept the credentials"):
            client.get(Ref(NAMESPACE, "anything"))
        client.close()


def test_a_verb_the_role_lacks_is_403_naming_verb_and_resource(target: Target) -> None:
    server = ours(target)
    obj = target.create()
    server.allow("experiments/status", "get")
    with pytest.raises(errors.KubeForbidden) as caught:
        target.client.patch_status(target.ref(obj), {"phase": "Running"})
    assert str(caught.value) == (
        f"forbidden: cannot patch experiments.abrouter.io/status in namespace {NAMESPACE}; "
        "the analyzer's Role needs the verb patch on experiments/status"
    )
    assert target.client.get(target.ref(obj))  # other resources are untouched by the rule


def test_an_unreachable_api_is_kube_unavailable_and_comes_back(target: Target) -> None:
    server = ours(target)
    obj = target.create()
    server.down()
    with pytest.raises(errors.KubeUnavailable, match="unreachable"):
        target.client.get(target.ref(obj))
    server.up()
    assert target.client.get(target.ref(obj))["metadata"]["name"] == obj["metadata"]["name"]


def test_bad_references_are_user_errors() -> None:
    assert Ref.parse("ns/exp") == Ref("ns", "exp")
    for text in ("exp", "ns/", "/exp", "NS/exp", "ns/a/b"):
        with pytest.raises(errors.KubeUserError, match="NAMESPACE/NAME"):
            Ref.parse(text)
