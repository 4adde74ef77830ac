"""Only predictions are exposures (issue 9): OIP health and metadata calls are not logged."""

from __future__ import annotations

import pytest

from abrouter.contract import experiment as model
from abrouter.contract.model import ExposureRule
from abrouter.router import exposures
from abrouter.router.exposures import Decider, is_exposure
from tests.router.conftest import MakeRouter


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("POST", "/v2/models/recsys/infer", True),
        ("POST", "/v2/models/recsys/versions/3/infer", True),
        ("POST", "/predict?x=1", True),
        ("GET", "/v2/health/ready", False),
        ("GET", "/v2/health/live", False),
        ("GET", "/v2", False),
        ("GET", "/v2/models/recsys", False),
        ("GET", "/v2/models/recsys/ready", False),
        ("GET", "/v2/models/recsys/versions/3", False),
        ("GET", "/v2/models/recsys/versions/3/ready?verbose=1", False),
        ("GET", "/recommendations", True),
    ],
)
def test_the_default_leaves_out_the_inference_protocols_health_and_metadata(
    method: str, target: str, expected: bool
) -> None:
    assert is_exposure(method, target, ()) is expected
    decider = Decider(())  # a routing table's: the same decision, then the same again from what it kept
    assert decider.decide(method, target) is expected
    assert decider.decide(method, target) is expected


def test_spec_rules_list_the_requests_that_count() -> None:
    rules = (ExposureRule(method="POST", path="/v1/models/*:predict"),)
    assert is_exposure("POST", "/v1/models/m:predict", rules)
    assert not is_exposure("GET", "/v1/models/m:predict", rules)
    assert not is_exposure("POST", "/v1/models/m", rules)
    decider = Decider(rules)
    for _ in range(2):
        assert decider.decide("POST", "/v1/models/m:predict?verbose=1")
        assert not decider.decide("GET", "/v1/models/m:predict")
        assert not decider.decide("POST", "/v1/models/m")


def test_a_decider_keeps_a_bounded_number_of_decisions() -> None:
    decider = Decider(())
    for i in range(exposures._DECIDED_MAX + 10):  # made-up paths and methods: what is kept stays bounded
        assert decider.decide(f"M{i % 7}", f"/made-up/{i}")
        assert decider._size <= exposures._DECIDED_MAX
    assert not decider.decide("GET", "/v2/health/ready")


def test_bad_rules_name_the_field() -> None:
    base = model.to_dict(
        model.parse(
            {
                "name": "x",
                "unit": {"header": "u"},
                "variants": [
                    {"name": "a", "upstream": "http://a:1", "weight": 1},
                    {"name": "b", "upstream": "http://b:1", "weight": 1},
                ],
            }
        )
    )
    with pytest.raises(model.ConfigError, match=r"^exposures\[0\]\.path: must start with '/'"):
        model.parse(base | {"exposures": [{"method": "POST", "path": "v2/infer"}]})
    with pytest.raises(model.ConfigError, match=r"^exposures\[0\]\.method: must be an HTTP method in capitals"):
        model.parse(base | {"exposures": [{"method": "post", "path": "/v2/*"}]})
    rules = model.parse(base | {"exposures": [{"path": "/v2/models/*/infer"}]})
    assert rules.exposures == (ExposureRule(method="*", path="/v2/models/*/infer"),)
    assert model.parse(model.to_dict(rules)) == rules


async def test_health_calls_are_forwarded_but_not_logged(make_router: MakeRouter) -> None:
    r = await make_router()
    for method, path in [("GET", "/v2/health/ready"), ("GET", "/v2/models/m/ready"), ("GET", "/v2/models/m")]:
        for _ in range(5):  # without a user id, each would have been a new unit
            resp = await r.client.request(method, path)
            assert resp.status == 200
            resp.release()
    for user in ("u1", "u2"):
        resp = await r.client.post("/v2/models/m/infer", headers={"X-User-Id": user}, data=b"{}")
        assert resp.status == 200
        resp.release()
    await r.settle()
    strata = await r.strata()
    assert sum(s.units for s in strata.values()) == 2
    assert sum(s.exposures for s in strata.values()) == 2
