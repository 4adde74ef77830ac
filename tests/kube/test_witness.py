"""The analyzer's witness in the Experiment's status: a Redis that lost data while every router
restarted too is reported (DATA INCOMPLETE), with the Kubernetes sink as with the file sink.

Real Redis (seeded as the router writes it), our API server with the CRD's schema (the
status subresource prunes what the schema does not allow), the CLI through argparse.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from abrouter.analysis import witness
from abrouter.analysis.errors import SourceError
from tests.kube.apiserver import PLURAL, KubeApiServer
from tests.kube.conftest import NAMESPACE, experiment_object, stored

#: Too few units for any decision: every look continues.
EARLY = {"control": (500, 25), "candidate": (500, 26)}
#: What a Redis that came back with less holds.
AFTER_LOSS = {"control": (200, 10), "candidate": (200, 10)}


def last_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def test_a_redis_that_lost_data_is_caught_by_the_witness_in_the_status(
    kube_api: KubeApiServer,
    experiment_name: str,
    redis_url: str,
    seed: Any,
    analyze: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name))
    seed(EARLY)
    assert analyze("--apply", "--json") == 0
    assert last_json(capsys)["data_incomplete_since"] is None
    first = stored(kube_api, experiment_name)["status"]["witness"]
    assert (first["units"], first["exposures"], first.get("incompleteSince")) == (1000, 1000, None)

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()  # Redis came back empty (and every router restarted: no marker says so)
    finally:
        client.close()
    seed(AFTER_LOSS)
    assert analyze("--apply", "--json") == 0
    assert last_json(capsys)["data_incomplete_since"] is not None
    second = stored(kube_api, experiment_name)["status"]["witness"]
    assert (second["units"], second["exposures"]) == (400, 400)
    assert second["incompleteSince"] == first["time"]  # since the last look that saw it whole

    assert analyze("--apply", "--json") == 0  # and it stays
    assert last_json(capsys)["data_incomplete_since"] is not None
    assert stored(kube_api, experiment_name)["status"]["witness"]["incompleteSince"] == first["time"]
    assert kube_api.pruned == []  # the CRD's schema allows the field


def test_without_apply_the_witness_is_neither_read_nor_written(
    kube_api: KubeApiServer, experiment_name: str, seed: Any, analyze: Any
) -> None:
    kube_api.put(PLURAL, NAMESPACE, experiment_object(experiment_name))
    seed(EARLY)
    assert analyze() == 0
    assert "witness" not in (stored(kube_api, experiment_name).get("status") or {})


def test_the_status_form_round_trips_and_a_malformed_one_is_an_error() -> None:
    seen = witness.Seen(units=3, exposures=5, at=1_700_000_000.0, incomplete_since=1_600_000_000.0)
    assert witness.from_status(witness.to_status(seen)) == seen
    assert witness.from_status(None) is None
    for bad in (
        {"units": 3},
        {"units": -1, "exposures": 0, "time": "2026-01-01T00:00:00Z"},
        "3",
        {"units": 1, "exposures": 1, "time": 5},
    ):
        with pytest.raises(SourceError, match=r"status\.witness"):
            witness.from_status(bad)
