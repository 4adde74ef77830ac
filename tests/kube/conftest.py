"""Fixtures for the Kubernetes tests: our API test server, a kubeconfig for it, Experiment objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abrouter.contract import experiment as spec
from abrouter.kube.client import KubeClient
from abrouter.router import examples
from tests.kube.apiserver import KubeApiServer

NAMESPACE = "abrouter-test"


@pytest.fixture
def kube_api() -> Iterator[KubeApiServer]:
    server = KubeApiServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def kubeconfig(kube_api: KubeApiServer, tmp_path: Path) -> Path:
    return kube_api.kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[KubeClient]:
    client = KubeClient.from_config(kubeconfig, role="analyzer")
    try:
        yield client
    finally:
        client.close()


def experiment_object(name: str, *, variants: list[dict[str, Any]] | None = None, **spec_fields: Any) -> dict[str, Any]:
    """An Experiment: the bundled example's spec (without `epoch`: it is metadata.generation)."""
    doc = spec.to_dict(spec.load(examples.EXPERIMENT_PATH))
    doc.pop("epoch")
    doc["name"] = doc["salt"] = name
    if variants is not None:
        doc["variants"] = variants
    doc.update(spec_fields)
    return {
        "apiVersion": "abrouter.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": doc,
    }


def weights_of(obj: dict[str, Any]) -> dict[str, float]:
    return {v["name"]: v["weight"] for v in obj["spec"]["variants"]}
