"""The Kubernetes manifests (k8s/) and the Dockerfile agree with each other and with the code.

No cluster and no Docker engine needed: the YAML is parsed with PyYAML and its relations
are checked (Services select real pods on real ports, probes hit declared ports, the
config path the router is given is where the ConfigMap is mounted, the router's flags
are ones `abrouter serve` knows, the grace period outlasts the drain, ...). When
`kubectl` is on PATH, the kustomization is also rendered with `kubectl kustomize`.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from abrouter.cli import build_parser
from abrouter.contract import experiment as model
from abrouter.router.settings import PLACEHOLDER_SECRET, secret_problem

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
NAMESPACE = "abrouter"
WORKLOADS = ("Deployment", "CronJob")


# ----------------------------------------------------------------------------- loading


def _yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def _load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _kustomization() -> dict[str, Any]:
    return _load_all(K8S / "kustomization.yaml")[0]


def _objects() -> list[dict[str, Any]]:
    """Every Kubernetes object in the files the kustomization lists as resources."""
    return [doc for res in _kustomization()["resources"] for doc in _load_all(K8S / res)]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in _objects() if o["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _of_kind(kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in k8s/, found {len(found)}"
    return found[0]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def _containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in _objects():
        if obj["kind"] in WORKLOADS:
            spec = _pod_spec(obj)
            for c in spec.get("initContainers", []) + spec["containers"]:
                yield obj, c


def _image_name(image: str) -> str:
    """`registry/abrouter:1.0@sha256:...` -> `registry/abrouter`."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return image[: len(image) - len(last)] + last.split(":", 1)[0]


def _is_abrouter(container: dict[str, Any]) -> bool:
    return _image_name(container["image"]) in {i["name"] for i in _kustomization().get("images", [])}


def _container(kind: str, name: str, container: str) -> dict[str, Any]:
    spec = _pod_spec(_one(kind, name))
    found = [c for c in spec["containers"] if c["name"] == container]
    assert found, f"{kind} {name} has no container {container!r}"
    return found[0]


def _port_matches(port: Any, container: dict[str, Any]) -> bool:
    declared = container.get("ports", [])
    if isinstance(port, str):
        return any(p.get("name") == port for p in declared)
    return any(p["containerPort"] == port for p in declared)


def _container_port_number(port: Any, container: dict[str, Any]) -> int:
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} declares no port {port!r}")


def _env(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in container.get("env", []) if e["name"] == name), None)


# ---------------------------------------------------------------------- the CLI parser


def _parse(argv: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`abrouter {shlex.join(argv)}` is rejected by the abrouter CLI parser")


def _command(container: dict[str, Any]) -> list[str]:
    assert "command" not in container, f"{container['name']}: keep the image's ENTRYPOINT (abrouter), set args"
    return [str(a) for a in container["args"]]


# ----------------------------------------------------------------------- the checks


def test_every_yaml_file_parses_and_every_object_is_in_the_namespace() -> None:
    files = _yaml_files()
    assert K8S / "kustomization.yaml" in files
    for path in files:
        for doc in _load_all(path):
            assert isinstance(doc, dict), f"{path.name}: every document must be a mapping"
            if "apiVersion" in doc and doc.get("kind") != "Kustomization":
                assert doc["metadata"].get("name"), f"{path.name}: {doc['kind']} without a name"
                if doc["kind"] != "Namespace":
                    assert doc["metadata"].get("namespace") == NAMESPACE, (
                        f"{path.name}: {doc['kind']} {doc['metadata']['name']} is not in namespace {NAMESPACE}"
                    )
    kust = _kustomization()
    assert kust["namespace"] == NAMESPACE
    assert any(o["metadata"]["name"] == NAMESPACE for o in _of_kind("Namespace"))


def test_kustomization_lists_existing_files_and_every_manifest() -> None:
    kust = _kustomization()
    for res in kust["resources"]:
        assert (K8S / res).is_file(), f"kustomization resource {res} does not exist"
    for gen in kust.get("configMapGenerator", []) + kust.get("secretGenerator", []):
        for entry in gen.get("files", []) + gen.get("envs", []):
            assert (K8S / entry.split("=", 1)[-1]).is_file(), f"generator {gen['name']}: {entry} does not exist"
    # A manifest not listed as a resource would silently never be applied.
    listed = {(K8S / r).resolve() for r in kust["resources"]}
    for path in _yaml_files():
        if any("apiVersion" in d and d.get("kind") != "Kustomization" for d in _load_all(path)):
            assert path.resolve() in listed, f"{path.relative_to(K8S)} holds objects but is not in resources"


def test_deployment_selectors_match_their_pod_labels() -> None:
    for obj in _of_kind("Deployment"):
        selector = obj["spec"]["selector"]["matchLabels"]
        labels = _pod_labels(obj)
        assert selector.items() <= labels.items(), f"Deployment {obj['metadata']['name']}: selector misses its pods"


def test_each_service_selects_pods_and_targets_a_declared_port() -> None:
    services = _of_kind("Service")
    assert services
    for svc in services:
        name, selector = svc["metadata"]["name"], svc["spec"]["selector"]
        selected = [d for d in _of_kind("Deployment") if selector.items() <= _pod_labels(d).items()]
        assert selected, f"Service {name} selects no Deployment's pods (selector {selector})"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for dep in selected:
                assert any(_port_matches(target, c) for c in _pod_spec(dep)["containers"]), (
                    f"Service {name}: targetPort {target!r} is no container port of "
                    f"Deployment {dep['metadata']['name']}"
                )


def test_probes_use_declared_ports() -> None:
    for obj, c in _containers():
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            action = c.get(probe, {})
            for kind in ("httpGet", "tcpSocket", "grpc"):
                if kind in action:
                    assert _port_matches(action[kind]["port"], c), (
                        f"{obj['metadata']['name']}/{c['name']} {probe}: port {action[kind]['port']!r} not declared"
                    )


def test_router_probes_hit_the_reserved_endpoints() -> None:
    router = _container("Deployment", "abrouter", "router")
    assert router["readinessProbe"]["httpGet"]["path"] == "/abrouter/readyz"
    assert router["livenessProbe"]["httpGet"]["path"] == "/abrouter/healthz"
    annotations = _one("Deployment", "abrouter")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/abrouter/metrics"
    assert _port_matches(int(annotations["prometheus.io/port"]), router)


def test_experiment_config_parses_and_routes_to_services_defined_here() -> None:
    experiment = model.load(K8S / "experiment.yaml")
    services = {s["metadata"]["name"]: s for s in _of_kind("Service")}
    for v in experiment.variants:
        url = urlsplit(v.upstream)
        host, *rest = url.hostname.split(".")
        assert not rest or rest[0] == NAMESPACE, f"{v.name}: {v.upstream} points outside namespace {NAMESPACE}"
        assert host in services, f"variant {v.name}: upstream {v.upstream} names no Service in k8s/"
        port = url.port or (443 if url.scheme == "https" else 80)
        assert port in [p["port"] for p in services[host]["spec"]["ports"]], (
            f"variant {v.name}: Service {host} has no port {port}"
        )
    # The upstream pods are the example models; the model answering is the one named.
    for v in experiment.variants:
        dep = _one("Deployment", urlsplit(v.upstream).hostname.split(".")[0])
        args = _parse(_command(_pod_spec(dep)["containers"][0]))
        assert args.command == "example-model"
        assert args.name == v.name


def _config_mount(container: dict[str, Any], pod: dict[str, Any], config: Path) -> None:
    """`config` is a file of the generated experiment ConfigMap, mounted as a directory."""
    kust = _kustomization()
    generated = {}
    for gen in kust["configMapGenerator"]:
        for entry in gen.get("files", []):
            key, _, source = entry.rpartition("=")
            generated[(gen["name"], key or PurePosixPath(source).name)] = source
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        cm = volumes[mount["name"]].get("configMap")
        if cm and PurePosixPath(mount["mountPath"]) == PurePosixPath(config).parent:
            assert "subPath" not in mount
            assert (cm["name"], config.name) in generated, (
                f"{container['name']}: {config} is not a key of a generated ConfigMap {cm['name']}"
            )
            assert generated[(cm["name"], config.name)] == "experiment.yaml"
            return
    pytest.fail(f"{container['name']}: --config {config} is in no directory-mounted ConfigMap")


def test_router_args_are_serve_flags_and_point_at_mounted_files() -> None:
    dep = _one("Deployment", "abrouter")
    pod, router = _pod_spec(dep), _container("Deployment", "abrouter", "router")
    args = _parse(_command(router))
    assert args.command == "serve"
    assert args.config is not None, "the router must be given --config (else it serves the bundled example)"
    _config_mount(router, pod, args.config)
    assert _port_matches(args.port, router), f"router listens on {args.port}, which is no container port"
    # The spill dir must be a writable emptyDir: the root filesystem is read-only.
    volumes = {v["name"]: v for v in pod["volumes"]}
    spill = [m for m in router["volumeMounts"] if PurePosixPath(m["mountPath"]) == PurePosixPath(args.spill_dir)]
    assert spill and "emptyDir" in volumes[spill[0]["name"]] and not spill[0].get("readOnly"), (
        f"--spill-dir {args.spill_dir} is not a writable emptyDir mount"
    )
    assert router["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert router["resources"]["requests"]["cpu"] in ("1", 1, "1000m"), "one router process uses one core"


def test_grace_period_outlasts_prestop_and_shutdown_timeout() -> None:
    pod, router = _pod_spec(_one("Deployment", "abrouter")), _container("Deployment", "abrouter", "router")
    args = _parse(_command(router))
    pre_stop = router["lifecycle"]["preStop"]
    if "sleep" in pre_stop:  # the native sleep action (Kubernetes >= 1.30)
        sleep = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        match = re.fullmatch(r"(?:.*\s)?sleep\s+(\d+(?:\.\d+)?)", " ".join(command))
        assert match, f"preStop should sleep; got {command}"
        sleep = float(match.group(1))
    assert 3 <= sleep <= 15, f"preStop sleep {sleep}s: long enough for the endpoints to drop the pod"
    assert pod["terminationGracePeriodSeconds"] > args.shutdown_timeout + sleep, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} must exceed "
        f"--shutdown-timeout {args.shutdown_timeout} + preStop {sleep}, or the kubelet SIGKILLs the drain"
    )


def test_no_container_mounts_the_experiment_config_with_subpath() -> None:
    # A subPath mount of a ConfigMap never sees updates: live weight changes would not arrive.
    config_maps = {g["name"] for g in _kustomization()["configMapGenerator"]}
    for obj, c in _containers():
        volumes = {v["name"]: v for v in _pod_spec(obj).get("volumes", [])}
        for mount in c.get("volumeMounts", []):
            cm = volumes[mount["name"]].get("configMap", {})
            assert not (cm.get("name") in config_maps and ("subPath" in mount or "subPathExpr" in mount)), (
                f"{obj['metadata']['name']}/{c['name']} mounts {cm['name']} with subPath: it would never update"
            )
    for gen in _kustomization()["configMapGenerator"]:
        # A hashed name would roll every pod on each edit instead of updating the file.
        assert gen.get("options", {}).get("disableNameSuffixHash") is True, gen["name"]


def test_secret_and_redis_references_resolve() -> None:
    kust = _kustomization()
    secrets = {g["name"]: {lit.split("=", 1)[0] for lit in g.get("literals", [])} for g in kust["secretGenerator"]}
    secrets.update(
        {o["metadata"]["name"]: set(o.get("data", {})) | set(o.get("stringData", {})) for o in _of_kind("Secret")}
    )
    services = {s["metadata"]["name"]: s for s in _of_kind("Service")}
    router = _container("Deployment", "abrouter", "router")
    assert _env(router, "ABROUTER_SECRET"), "replicas must share ABROUTER_SECRET to verify each other's request ids"
    for obj, c in _containers():
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], set()), (
                    f"{obj['metadata']['name']}/{c['name']}: env {e['name']} refers to a missing secret key"
                )
        redis_url = _env(c, "REDIS_URL")
        if redis_url:
            url = urlsplit(redis_url["value"])
            assert url.scheme in ("redis", "rediss")
            assert url.hostname.split(".")[0] in services, f"REDIS_URL {redis_url['value']} names no Service"
            assert (url.port or 6379) in [p["port"] for p in services[url.hostname.split(".")[0]]["spec"]["ports"]]
    redis = _container("Deployment", "redis", "redis")
    command = " ".join(redis.get("command", []) + redis.get("args", []))
    assert "--appendonly yes" in command
    # Full: refuse writes (routers spill) rather than evict aggregates or be OOM-killed.
    assert "--maxmemory-policy noeviction" in command
    maxmemory = int(re.search(r"--maxmemory (\d+)mb", command).group(1))
    limit = redis["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and maxmemory < 0.8 * int(limit[:-2]) * 1024


def test_the_shipped_secret_is_the_placeholder_the_router_warns_about() -> None:
    literals = [lit for g in _kustomization()["secretGenerator"] for lit in g.get("literals", [])]
    assert f"ABROUTER_SECRET={PLACEHOLDER_SECRET.decode()}" in literals
    assert "placeholder" in (secret_problem(PLACEHOLDER_SECRET) or "")
    assert "not set" in (secret_problem(b"") or "")
    assert secret_problem(b"3f9c0a7d5e2b4c6a") is None


def test_example_models_listen_on_their_container_ports() -> None:
    for obj, c in _containers():
        if _is_abrouter(c) and c["args"][0] == "example-model":
            args = _parse(_command(c))
            assert _port_matches(args.port, c), f"{obj['metadata']['name']}: --port {args.port} not declared"


def test_analyzer_cronjob_runs_a_report_only_analysis() -> None:
    job = _one("CronJob", "abrouter-analyzer")
    assert job["spec"]["schedule"] == "*/5 * * * *"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    c = _container("CronJob", "abrouter-analyzer", "analyzer")
    argv = _command(c)
    args = _parse(argv)
    assert args.command == "analyze" and args.once and args.json
    assert "--apply" not in argv, "report only until --apply goes through the Kubernetes API"
    _config_mount(c, _pod_spec(job), args.config)
    assert _env(c, "REDIS_URL") or "--redis-url" in argv


def test_hpa_pdb_and_images_target_real_objects() -> None:
    router_labels = _pod_labels(_one("Deployment", "abrouter"))
    for hpa in _of_kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = _one(ref["kind"], ref["name"])
        assert hpa["spec"]["minReplicas"] >= 2
        for c in _pod_spec(target)["containers"]:
            assert "cpu" in c["resources"]["requests"], "a CPU-utilisation HPA needs CPU requests"
    pdbs = _of_kind("PodDisruptionBudget")
    assert any(p["spec"]["selector"]["matchLabels"].items() <= router_labels.items() for p in pdbs)
    # `images` only retags containers whose image name it names.
    used = {_image_name(c["image"]) for _, c in _containers()}
    for entry in _kustomization()["images"]:
        assert entry["name"] in used, f"images entry {entry['name']!r} matches no container image"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_kustomize_renders_everything_into_the_namespace() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    config_maps = {o["metadata"]["name"] for o in rendered if o["kind"] == "ConfigMap"}
    images = {c["image"] for o in rendered if o["kind"] in WORKLOADS for c in _pod_spec(o)["containers"]}
    assert all(":" in i for i in images), images
    for obj in rendered:
        if obj["kind"] in WORKLOADS:
            for v in _pod_spec(obj).get("volumes", []):
                if "configMap" in v:
                    assert v["configMap"]["name"] in config_maps


# -------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _instr(name: str) -> list[str]:
    return [rest for op, rest in _dockerfile() if op == name]


def test_dockerfile_entrypoint_cmd_and_user_match_the_manifests() -> None:
    assert _instr("FROM") == ["python:3.11-slim"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert yaml.safe_load(_instr("ENTRYPOINT")[-1]) == list(pyproject["project"]["scripts"])
    cmd = [str(a) for a in yaml.safe_load(_instr("CMD")[-1])]
    default = _parse(cmd)
    router = _parse(_command(_container("Deployment", "abrouter", "router")))
    assert default.config == router.config, "image default --config differs from the ConfigMap mount"
    assert f"{default.port}" in " ".join(_instr("EXPOSE")).split()
    user = _instr("USER")[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root USER, so runAsNonRoot can verify it"
    assert _pod_spec(_one("Deployment", "abrouter"))["securityContext"]["runAsUser"] == int(user)
    env = " ".join(_instr("ENV"))
    spill = re.search(r"ABROUTER_SPILL_DIR=(\S+)", env)
    assert spill and PurePosixPath(spill.group(1)) == PurePosixPath(router.spill_dir)
    assert "test" not in " ".join(_instr("RUN")).split("pip install", 1)[1].split("&&")[0], "no test extras"


def test_dockerfile_copies_what_pip_install_needs_and_dockerignore_keeps_it() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    sources = []
    for rest in _instr("COPY"):
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        sources += [p.rstrip("/") for p in parts[:-1]]
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist (the build would fail)"
    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    needed += [pat.rstrip("*") for pat in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    for path in needed:
        assert path in sources, f"pip install needs {path}; the Dockerfile does not copy it"
    ignored = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#") and not ln.startswith("!")
    ]
    for path in needed:
        hits = [pat for pat in ignored if fnmatch.fnmatch(path, pat.removeprefix("**/"))]
        assert not hits, f".dockerignore {hits} drops {path}, which the image needs"
