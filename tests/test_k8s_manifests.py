"""The Kubernetes manifests (k8s/) and the Dockerfile agree with each other, the API and the code.

No cluster and no Docker engine: `kubectl kustomize` renders k8s/base and the example
overlay (`.ci/run` installs Debian's kubernetes-client when kubectl is missing), every
rendered object is validated offline by `kubernetes-validate` against the API's bundled
schemas, and the Experiments against our CRD's schema. Then the relations are checked:
least-privilege RBAC, the CLI flags the containers run, probes, securityContext,
resources, Secrets and Services that exist, the spec the parser accepts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from abrouter.cli import build_parser
from abrouter.contract import crd, resource
from abrouter.router.matching import Gateway
from abrouter.router.settings import PLACEHOLDER_SECRET
from tests.contract import crdschema

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
BASE = K8S / "base"
EXAMPLE = K8S / "examples" / "recsys"
COMPONENT = K8S / "components" / "analyzer-cronjob"
NAMESPACE = "abrouter"
#: The oldest Kubernetes minor still supported upstream when this was written.
KUBE_VERSION = "1.30.0"
WORKLOADS = ("Deployment", "StatefulSet", "CronJob")

# ----------------------------------------------------------------------------- rendering


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not on PATH (.ci/run installs Debian's kubernetes-client)"
    out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    found = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    major = re.match(r"v(\d+)", found)
    # `labels:` and components need kustomize 4 (kubectl >= 1.21); Debian bookworm's
    # kubernetes-client is 1.20 with kustomize 2.
    assert major and int(major.group(1)) >= 4, f"kubectl {kubectl} embeds kustomize {found or '?'}; need v4 or later"
    return kubectl


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = _kubectl()
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {path} failed: {out.stderr.strip()}"
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _kustomize(BASE)


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return _kustomize(EXAMPLE)


@pytest.fixture(scope="module")
def cronjob(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The example with the analyzer-cronjob component, as docs/kubernetes.md shows it."""
    overlay = tmp_path_factory.mktemp("overlay")
    # kustomize refuses absolute roots: relative paths from the temporary directory.
    kust = {
        "resources": [os.path.relpath(EXAMPLE, overlay)],
        "components": [os.path.relpath(COMPONENT, overlay)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kust), encoding="utf-8")
    return _kustomize(overlay)


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def _of(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template (metadata + spec) of a workload."""
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def _containers(objs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objs:
        if obj["kind"] in WORKLOADS:
            spec = _pod(obj)["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                yield obj, c


def _env(container: dict[str, Any], name: str) -> dict[str, Any]:
    found = [e for e in container.get("env", []) if e["name"] == name]
    assert found, f"container {container['name']} has no env {name}"
    return found[0]


def _resolved_args(objs: list[dict[str, Any]], container: dict[str, Any]) -> list[str]:
    """The container's args with $(VAR) expanded from the downward API and ConfigMaps, as the kubelet does."""
    assert "command" not in container, f"{container['name']}: keep the image's ENTRYPOINT (abrouter), set args"
    values: dict[str, str] = {}
    for e in container.get("env", []):
        source = e.get("valueFrom", {})
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.namespace"
            values[e["name"]] = NAMESPACE
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            values[e["name"]] = _one(objs, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif "value" in e:
            values[e["name"]] = e["value"]
    return [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], str(a)) for a in container["args"]]


def _parse(argv: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`abrouter {shlex.join(argv)}` is rejected by the abrouter CLI parser")


# ----------------------------------------------------------------------- the API's schemas


def test_the_kustomizations_render_and_every_object_is_valid(
    base: list[dict[str, Any]], example: list[dict[str, Any]], cronjob: list[dict[str, Any]]
) -> None:
    document = _one(base, "CustomResourceDefinition", "experiments.abrouter.io")
    for obj in [*base, *example, *cronjob]:
        if obj["kind"] == crd.KIND:
            assert crdschema.errors(obj, document) == [], f"Experiment {obj['metadata']['name']}"
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition"):
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']} {obj['metadata']['name']}"
    assert {o["kind"] for o in example} >= {"Experiment", "CustomResourceDefinition", "Deployment"}
    assert {o["kind"] for o in cronjob} >= {"Experiment", "Deployment", "CronJob"}


def test_the_rendered_crd_is_the_generators(base: list[dict[str, Any]]) -> None:
    rendered = _one(base, "CustomResourceDefinition", "experiments.abrouter.io")
    expected = crd.crd()
    # kustomize adds the common label; nothing else may differ.
    rendered["metadata"]["labels"].pop("app.kubernetes.io/part-of")
    assert rendered == expected


def test_every_manifest_file_is_rendered_or_documented_as_an_alternative() -> None:
    listed = set(_load(BASE / "kustomization.yaml")[0]["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, "a manifest not in resources is never applied"


# ------------------------------------------------------------------------------ RBAC


def _rules(objs: list[dict[str, Any]], role: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in _one(objs, "Role", role)["rules"]:
        assert "resourceNames" not in rule or rule["resourceNames"]
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def test_rbac_grants_each_role_exactly_its_verbs(base: list[dict[str, Any]]) -> None:
    assert _rules(base, "abrouter-router") == {
        ("abrouter.io", "experiments"): {"get", "list", "watch"},
        ("", "events"): {"create"},
    }
    assert _rules(base, "abrouter-analyzer") == {
        ("abrouter.io", "experiments"): {"get", "list", "watch", "patch"},
        ("abrouter.io", "experiments/status"): {"get", "patch"},
        ("", "events"): {"create"},
        ("apps", "deployments/scale"): {"get", "patch"},
        ("coordination.k8s.io", "leases"): {"get", "update", "create"},
    }
    lease_rules = [r for r in _one(base, "Role", "abrouter-analyzer")["rules"] if "leases" in r["resources"]]
    # Only its own Lease may be read and renewed (create cannot be limited to a name).
    assert all(r.get("resourceNames") == ["abrouter-analyzer"] for r in lease_rules if r["verbs"] != ["create"])
    assert not _of(base, "ClusterRole") and not _of(base, "ClusterRoleBinding")
    for role in _of(base, "Role"):
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"] and "*" not in rule["resources"] + rule["verbs"]


def test_each_workload_runs_as_its_roles_service_account(base: list[dict[str, Any]]) -> None:
    bindings = {b["metadata"]["name"]: b for b in _of(base, "RoleBinding")}
    for kind, name, account in (
        ("Deployment", "abrouter", "abrouter-router"),
        ("Deployment", "abrouter-analyzer", "abrouter-analyzer"),
    ):
        spec = _pod(_one(base, kind, name))["spec"]
        assert spec["serviceAccountName"] == account
        assert spec["automountServiceAccountToken"] is True, f"{name}: the in-cluster config needs the token"
        _one(base, "ServiceAccount", account)
        binding = bindings[account]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    for obj in _of(base, "StatefulSet"):  # Redis needs no API access
        assert _pod(obj)["spec"]["automountServiceAccountToken"] is False


# ------------------------------------------------------------------- the pods themselves


def test_every_container_is_locked_down_and_has_requests_and_limits(example: list[dict[str, Any]]) -> None:
    containers = list(_containers(example))
    assert len(containers) >= 5
    for obj, c in containers:
        where = f"{obj['kind']} {obj['metadata']['name']}/{c['name']}"
        pod = _pod(obj)["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0, where
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"


def test_the_router_serves_the_experiment_with_probes_and_a_spill_dir(base: list[dict[str, Any]]) -> None:
    dep = _one(base, "Deployment", "abrouter")
    assert dep["spec"]["replicas"] == 2
    c = _pod(dep)["spec"]["containers"][0]
    args = _parse(_resolved_args(base, c))
    assert args.func.__name__ == "serve"
    assert args.experiment == f"{NAMESPACE}/recsys-v2" and args.config is None
    assert c["readinessProbe"]["httpGet"]["path"] == "/abrouter/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/abrouter/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in {p["name"] for p in c["ports"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod(dep)["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[str(args.spill_dir)]], "the spill dir must be a writable emptyDir"
    grace = _pod(dep)["spec"]["terminationGracePeriodSeconds"]
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert grace > sleep + args.shutdown_timeout, "the grace period must outlast preStop + the drain"


def test_redis_url_and_the_secret_come_from_secrets_that_exist(base: list[dict[str, Any]]) -> None:
    router = _pod(_one(base, "Deployment", "abrouter"))["spec"]["containers"][0]
    analyzer = _pod(_one(base, "Deployment", "abrouter-analyzer"))["spec"]["containers"][0]
    for c, names in ((router, ("REDIS_URL", "ABROUTER_SECRET")), (analyzer, ("REDIS_URL",))):
        for name in names:
            ref = _env(c, name)["valueFrom"]["secretKeyRef"]
            assert ref["key"] in _one(base, "Secret", ref["name"])["data"]
    assert "ABROUTER_SECRET" not in {e["name"] for e in analyzer.get("env", [])}, "the analyzer signs nothing"


def test_the_shipped_secret_is_the_placeholder_the_router_warns_about() -> None:
    kust = _load(BASE / "kustomization.yaml")[0]
    secret = next(g for g in kust["secretGenerator"] if g["name"] == "abrouter-secret")
    assert f"ABROUTER_SECRET={PLACEHOLDER_SECRET.decode()}" in secret["literals"]


def test_redis_is_a_statefulset_with_aof_a_pvc_and_noeviction(base: list[dict[str, Any]]) -> None:
    sts = _one(base, "StatefulSet", "redis")
    c = _pod(sts)["spec"]["containers"][0]
    args = c["args"]
    flags = dict(zip(args[1::2], args[2::2]))
    assert flags["--appendonly"] == "yes" and flags["--maxmemory-policy"] == "noeviction"
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {"name": claim, "mountPath": flags["--dir"]} in c["volumeMounts"]
    url = urlsplit(yaml.safe_load(_kust_literal("abrouter-redis", "REDIS_URL")))
    svc = _one(base, "Service", url.hostname or "")
    assert url.port in {p["port"] for p in svc["spec"]["ports"]}


def _kust_literal(name: str, key: str) -> str:
    kust = _load(BASE / "kustomization.yaml")[0]
    gen = next(g for g in kust["secretGenerator"] + kust["configMapGenerator"] if g["name"] == name)
    return next(lit.split("=", 1)[1] for lit in gen["literals"] if lit.startswith(f"{key}="))


def test_the_analyzer_looks_at_every_experiment_every_minute_with_one_leader(base: list[dict[str, Any]]) -> None:
    assert not _of(base, "CronJob"), "the CronJob is the component's, not the base's"
    dep = _one(base, "Deployment", "abrouter-analyzer")
    assert dep["spec"]["replicas"] >= 1
    spec = _pod(dep)["spec"]
    assert spec["serviceAccountName"] == "abrouter-analyzer"
    args = _parse(_resolved_args(base, spec["containers"][0]))
    assert args.func.__name__ == "analyze"
    assert args.experiments == NAMESPACE and args.experiment is None and args.config is None
    assert args.apply and args.every == 60 and not args.dry_run
    # Replicas never act at once: they elect a leader through the Lease the Role lets them renew.
    lease_rules = [r for r in _one(base, "Role", "abrouter-analyzer")["rules"] if "leases" in r["resources"]]
    assert any(args.lease in r.get("resourceNames", []) and "update" in r["verbs"] for r in lease_rules)
    assert spec["terminationGracePeriodSeconds"] >= 30, "time to finish the look under way and release the Lease"


def test_the_analyzer_cronjob_component_looks_every_five_minutes_one_at_a_time_instead(
    cronjob: list[dict[str, Any]],
) -> None:
    assert not [d for d in _of(cronjob, "Deployment") if d["metadata"]["name"] == "abrouter-analyzer"], (
        "two analyzers would act on the same Experiments"
    )
    job = _one(cronjob, "CronJob", "abrouter-analyzer")
    assert job["spec"]["schedule"] == "*/5 * * * *"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    assert job["spec"]["jobTemplate"]["spec"]["backoffLimit"] >= 0
    spec = _pod(job)["spec"]
    assert spec["serviceAccountName"] == "abrouter-analyzer"
    c = spec["containers"][0]
    args = _parse(_resolved_args(cronjob, c))
    assert args.func.__name__ == "analyze"
    assert args.experiments == NAMESPACE and args.apply and args.every is None and args.lease is None
    ref = _env(c, "REDIS_URL")["valueFrom"]["secretKeyRef"]
    assert ref["key"] in _one(cronjob, "Secret", ref["name"])["data"]


def test_services_select_pods_on_declared_ports(example: list[dict[str, Any]]) -> None:
    workloads = [o for o in example if o["kind"] in ("Deployment", "StatefulSet")]
    for svc in _of(example, "Service"):
        selector = svc["spec"]["selector"]
        selected = [w for w in workloads if selector.items() <= _pod(w)["metadata"]["labels"].items()]
        assert selected, f"Service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            for w in selected:
                declared = [p for c in _pod(w)["spec"]["containers"] for p in c.get("ports", [])]
                assert port["targetPort"] in {p["name"] for p in declared} | {p["containerPort"] for p in declared}


def test_hpa_and_pdb_target_the_router(base: list[dict[str, Any]]) -> None:
    dep = _one(base, "Deployment", "abrouter")
    hpa = _one(base, "HorizontalPodAutoscaler", "abrouter")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "abrouter"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = _one(base, "PodDisruptionBudget", "abrouter")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


# -------------------------------------------------------------------------- the example


def test_the_example_experiment_parses_and_routes_to_its_model_services(example: list[dict[str, Any]]) -> None:
    (obj,) = _of(example, "Experiment")
    found = resource.parse({**obj, "metadata": {**obj["metadata"], "generation": 1}})
    assert found.name == _one(example, "ConfigMap", _configmap_name(example))["data"]["EXPERIMENT"]
    assert [v.name for v in found.experiment.variants] == ["model-a", "model-b"]
    for v in found.experiment.variants:
        url = urlsplit(v.upstream)
        svc = _one(example, "Service", url.hostname or "")
        assert url.port in {p["port"] for p in svc["spec"]["ports"]}
        dep = _one(example, "Deployment", v.deployment or "")
        args = _parse([str(a) for a in _pod(dep)["spec"]["containers"][0]["args"]])
        assert (
            args.func.__name__ == "example_model"
            and args.port == _pod(dep)["spec"]["containers"][0]["ports"][0]["containerPort"]
        )


def _configmap_name(objs: list[dict[str, Any]]) -> str:
    router = _pod(_one(objs, "Deployment", "abrouter"))["spec"]["containers"][0]
    return str(_env(router, "EXPERIMENT")["valueFrom"]["configMapKeyRef"]["name"])


# -------------------------------------------------------------------------- Dockerfile


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (NAME, rest), per stage (ARGs before the first FROM dropped)."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        if name.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((name.upper(), rest.strip()))
    return stages


def _base_image() -> str:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert match, "the base image is one ARG, so both stages use the same"
    return match.group(1)


def test_dockerfile_is_multi_stage_from_a_pinned_slim_base() -> None:
    stages = _stages()
    assert len(stages) == 2
    image = _base_image()
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    assert all(s[0][1].split()[0] == "${PYTHON_IMAGE}" for s in stages)
    builder, final = stages
    assert builder[0][1].endswith("AS builder")
    assert any(n == "RUN" and "pip wheel" in r for n, r in builder)
    copies = [r for n, r in final if n == "COPY"]
    assert copies and all(r.startswith("--from=builder") for r in copies), "the final stage gets only the wheel"


def test_dockerfile_user_and_entrypoint_match_the_manifests(example: list[dict[str, Any]]) -> None:
    final = _stages()[-1]
    (user,) = [r for n, r in final if n == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), "a numeric user, so runAsNonRoot can verify it"
    assert [r for n, r in final if n == "ENTRYPOINT"] == ['["abrouter"]']
    for obj, _ in _containers(example):
        if obj["kind"] != "StatefulSet":  # Redis runs its own image
            assert _pod(obj)["spec"]["securityContext"]["runAsUser"] == int(uid)
    (cmd,) = [r for n, r in final if n == "CMD"]
    _parse(yaml.safe_load(cmd))


def test_dockerfile_copies_what_the_wheel_needs_and_dockerignore_keeps_it() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for name, rest in _stages()[0]:
        if name == "COPY":
            *sources, _ = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"
                assert src.rstrip("/") not in ignored, f".dockerignore drops {src}"


# ------------------------------------------------------------------ one gateway (issue 16)


def test_the_gateway_example_serves_every_experiment_of_the_namespace_without_overlaps(
    base: list[dict[str, Any]],
) -> None:
    gateway = _kustomize(K8S / "examples" / "gateway")
    document = _one(base, "CustomResourceDefinition", "experiments.abrouter.io")
    router = _pod(_one(gateway, "Deployment", "abrouter"))["spec"]["containers"][0]
    args = _parse(_resolved_args(gateway, router))
    assert args.experiments == NAMESPACE and args.experiment is None and args.config is None
    experiments = []
    for obj in gateway:
        if obj["kind"] != crd.KIND:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            continue
        assert crdschema.errors(obj, document) == [], f"Experiment {obj['metadata']['name']}"
        experiments.append(resource.parse({**obj, "metadata": {**obj["metadata"], "generation": 1}}).experiment)
    assert len(experiments) == 2
    Gateway({e.name: e.match for e in experiments})  # no two match the same requests
    for e in experiments:
        for v in e.variants:
            assert v.model is not None
            assert _one(gateway, "Service", urlsplit(v.upstream).hostname or "")
