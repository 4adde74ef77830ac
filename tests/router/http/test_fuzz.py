"""Property-based fuzzing (issue 7): the outcome endpoint and the config parser.

After every generated body the router must still serve, and Redis must hold exactly what
the API accepted (per metric: the events; for the continuous metric: the sum). The
config parser must either parse or raise `ConfigError`: never another exception.

Hypothesis drives the cases from a worker thread; each case runs on the test's event
loop (where the router lives) through `run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from abrouter.contract import experiment as model
from tests.router.conftest import MakeRouter, RouterUnderTest

T = TypeVar("T")

USERS = [f"u{i}" for i in range(5)]

# Numbers as JSON text, so that NaN, Infinity and out-of-range literals reach the server.
number_text = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "1e15", "1e15000", "0.0"]),
    st.sampled_from(["1e16", "-1e15", "5e-324", "1.7976931348623157e308", "9" * 400]),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
random_json = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@st.composite
def item_text(draw: st.DrawFn) -> str:
    """One outcome item as JSON text: mostly well-formed, with a random value literal."""
    fields = {
        "unit": json.dumps(draw(st.sampled_from([*USERS, "never-seen"]))),
        "metric": json.dumps(draw(st.sampled_from(["revenue", "conversion", "clicks"]))),
        "value": draw(number_text | st.sampled_from(["true", "false", '"3"', "null", "[]", "{}"])),
    }
    if draw(st.integers(0, 9)) == 0:  # now and then a stray or wrong-typed field
        fields[draw(st.sampled_from(["request_id", "bogus", "event"]))] = json.dumps(draw(json_leaf))
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


bodies = st.one_of(
    st.lists(item_text(), min_size=1, max_size=12).map(lambda items: ("[" + ",".join(items) + "]").encode()),
    item_text().map(str.encode),
    random_json.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),  # not UTF-8, not JSON
    st.integers(1, 3000).map(lambda depth: ("[" * depth + "]" * depth).encode()),  # deep nesting
)


@dataclass
class Ledger:
    events: dict[str, int]
    revenue_sum: float = 0.0
    revenue_abs: float = 0.0


def _accepted(body: bytes) -> list[dict[str, Any]]:
    parsed = json.loads(body)
    return parsed if isinstance(parsed, list) else [parsed]


async def one_case(r: RouterUnderTest, body: bytes, ledger: Ledger) -> None:
    resp = await r.client.post("/abrouter/outcomes", data=body, headers={"Content-Type": "application/json"})
    payload = await resp.json()  # every answer is JSON, whatever the body
    assert resp.status in (202, 400, 413, 422), (resp.status, payload)
    assert isinstance(payload.get("error", ""), str)
    if resp.status == 202:
        assert payload["repeated"] == 0
        for item in _accepted(body):
            value = float(item["value"])
            ledger.events[item["metric"]] += 1
            if item["metric"] == "revenue":
                ledger.revenue_sum += value
                ledger.revenue_abs += abs(value)
    await r.settle()
    health = await r.client.get("/abrouter/healthz")
    assert health.status == 200
    health.release()
    strata = (await r.strata()).values()
    for metric, count in ledger.events.items():
        assert sum(s.metrics[metric].events for s in strata) == count, metric
    got = sum(s.metrics["revenue"].sum for s in strata)
    assert math.isfinite(got)
    assert got == pytest.approx(ledger.revenue_sum, rel=1e-9, abs=1e-9 * ledger.revenue_abs + 1e-6)


async def test_the_outcome_endpoint_under_fuzzing_keeps_redis_equal_to_what_it_accepted(
    make_router: MakeRouter,
) -> None:
    r = await make_router()
    for user in USERS:  # exposed, so unit-addressed outcomes resolve
        resp = await r.client.post("/predict", headers={"X-User-Id": user}, data=b"{}")
        assert resp.status == 200
        resp.release()
    await r.settle()
    loop = asyncio.get_running_loop()
    ledger = Ledger(events={"revenue": 0, "conversion": 0})

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    ten_thousand = ("[" + ",".join(['{"unit":"u1","metric":"revenue","value":1}'] * 10_000) + "]").encode()

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies)
    @example(body=ten_thousand)
    @example(body=b'{"unit":"u1","metric":"revenue","value":1e200}')
    @example(body=b'[{"unit":"u1","metric":"revenue","value":1e15},{"unit":"u1","metric":"revenue","value":1e15}]')
    @example(body=b"\xff\xfe\x00garbage")
    def case(body: bytes) -> None:
        run(one_case(r, body, ledger))

    await asyncio.to_thread(case)
    assert ledger.events["revenue"] > 0  # the generator does reach the accepting path
    resp = await r.client.post("/predict", headers={"X-User-Id": "after"}, data=b"{}")
    assert resp.status == 200  # and the data path still serves
    resp.release()


# ------------------------------------------------------------------ the config parser

spec_values = st.recursive(
    json_leaf | st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, 5e-324, 10**400]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
    max_leaves=30,
)
good = {
    "name": "fuzz",
    "unit": {"header": "X-User-Id"},
    "variants": [
        {"name": "control", "upstream": "http://a:8080", "weight": 50},
        {"name": "candidate", "upstream": "http://b:8080", "weight": 50},
    ],
}


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from([*good, "metrics", "timeouts", "analysis", "outcome_ttl", "epoch"]), value=spec_values)
def test_a_spec_with_one_field_replaced_by_random_data_parses_or_names_the_problem(key: str, value: Any) -> None:
    try:
        model.parse({**good, key: value})
    except model.ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.integers(1, 5000).map(lambda d: "name: x\nunit: " + "{a: " * d + "1" + "}" * d),
        st.lists(st.sampled_from(["name: a", "name: b", "unit: {header: X}", "variants: []", "- x", ": :"])).map(
            "\n".join
        ),
    )
)
def test_random_yaml_parses_or_is_one_config_error(text: str) -> None:
    try:
        model.loads(text, "fuzz.yaml")
    except model.ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=100))
def test_a_config_file_that_is_not_utf8_is_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path: Path = tmp_path_factory.mktemp("cfg") / "exp.yaml"
    path.write_bytes(b"\xff" + data)
    with pytest.raises(model.ConfigError):
        model.load(path)
