"""Fixtures for the Kubernetes tests: our API test server, a kubeconfig for it, Experiment objects,
and `abrouter analyze --experiment` run through argparse against them with Redis seeded."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from abrouter.analysis import commands
from abrouter.contract import experiment as spec
from abrouter.kube.client import KubeClient
from abrouter.router import examples
from tests.analysis.test_commands import write_aggregates
from tests.kube.apiserver import NAMESPACE, PLURAL, KubeApiServer

#: (units, conversions) per arm: the candidate wins (promote) or loses (rollback).
WINNING = {"control": (20_000, 1000), "candidate": (20_000, 1300)}
LOSING = {"control": (20_000, 1300), "candidate": (20_000, 1000)}


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


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="abrouter")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def seed(redis_url: str, experiment_name: str) -> Any:
    def write(arms: dict[str, tuple[int, int]]) -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            write_aggregates(client, experiment_name, control=arms["control"], candidate=arms["candidate"])
        finally:
            client.close()

    return write


@pytest.fixture
def analyze(kubeconfig: Path, redis_url: str, experiment_name: str) -> Any:
    def call(*extra: str) -> int:
        ref = f"{NAMESPACE}/{experiment_name}"
        return run(["analyze", "--experiment", ref, "--kubeconfig", str(kubeconfig), "--redis-url", redis_url, *extra])

    return call


def stored(kube_api: KubeApiServer, name: str) -> dict[str, Any]:
    obj = kube_api.get(PLURAL, NAMESPACE, name)
    assert obj is not None
    return obj


def events(kube_api: KubeApiServer) -> list[str]:
    return [e["reason"] for e in kube_api.list("events", NAMESPACE)]
