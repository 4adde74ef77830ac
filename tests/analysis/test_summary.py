"""The --summary format: parsing into ExperimentData, and errors that name the bad field."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from abrouter.analysis import summary
from abrouter.analysis.errors import InputError
from abrouter.analysis.stats.sample import Sample
from abrouter.contract.experiment import AnalysisSettings

EXAMPLE: dict[str, Any] = {
    "metrics": [{"name": "revenue", "kind": "continuous", "direction": "increase"}],
    "variants": [
        {
            "name": "control",
            "weight": 50,
            "units": 3407,
            "metrics": {"revenue": {"n": 3407, "sum": 1396.87, "sum_squares": 52377.9767}},
        },
        {
            "name": "candidate",
            "weight": 50,
            "units": 3461,
            "metrics": {"revenue": {"n": 3461, "sum": 2422.7, "sum_squares": 134698.29}},
        },
    ],
}


def example(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(EXAMPLE)
    doc.update(changes)
    return doc


def error(doc: Any) -> str:
    with pytest.raises(InputError) as info:
        summary.parse(doc, source="s.json")
    return str(info.value)


def test_the_issue_example_parses() -> None:
    data, elapsed = summary.parse(EXAMPLE)
    assert elapsed is None
    assert [a.name for a in data.arms] == ["control", "candidate"]
    assert data.weights == {"control": 50.0, "candidate": 50.0}
    assert data.primary is not None and data.primary.name == "revenue"
    assert data.control.units == 3407
    assert data.samples("candidate", "revenue") == (Sample(3461, 2422.7, 134698.29),)
    # The defaults, but for the guardrail on slow_requests: this summary sets no threshold.
    defaults = AnalysisSettings()
    rails = tuple(g for g in defaults.guardrails if g.metric != "slow_requests")
    assert data.settings == dataclasses.replace(defaults, guardrails=rails)
    assert data.epoch_ids == (1,)


def test_binary_metric_may_leave_out_sum_squares() -> None:
    doc = example(metrics=[{"name": "conversion", "kind": "binary"}])
    for v, s in zip(doc["variants"], (100, 120)):
        v["metrics"] = {"conversion": {"n": v["units"], "sum": s}}
    data, _ = summary.parse(doc)
    assert data.samples("control", "conversion")[0].effective_sum_sq == 100


def test_ratio_metric_carries_its_denominator_sums() -> None:
    doc = example()
    doc["variants"][0]["metrics"]["revenue"] |= {
        "denominator_sum": 5000,
        "denominator_sum_squares": 9000,
        "sum_products": 2100.5,
    }
    doc["variants"][1]["metrics"]["revenue"] |= {
        "denominator_sum": 5100,
        "denominator_sum_squares": 9100,
        "sum_products": 3100.5,
    }
    data, _ = summary.parse(doc)
    sample = data.samples("control", "revenue")[0]
    assert sample.is_ratio and (sample.den_sum, sample.den_sum_sq, sample.sum_products) == (5000, 9000, 2100.5)
    assert data.is_ratio("revenue")


def test_builtin_metrics_need_no_declaration_but_need_denominators() -> None:
    doc = example()
    for v in doc["variants"]:
        v["metrics"]["latency_ms"] = {
            "n": v["units"],
            "sum": 50.0 * v["units"],
            "sum_squares": 2600.0 * v["units"],
            "denominator_sum": v["units"],
            "denominator_sum_squares": v["units"],
            "sum_products": 50.0 * v["units"],
        }
    data, _ = summary.parse(doc)
    assert [m.name for m in data.metrics] == ["revenue", "latency_ms"]
    for v in doc["variants"]:
        del v["metrics"]["latency_ms"]["denominator_sum"]
    assert "variants[0].metrics.latency_ms.denominator_sum: is required" in error(doc)


def test_a_summary_with_slow_requests_and_its_threshold_is_guarded_on_them() -> None:
    doc = example()
    for v, slow in zip(doc["variants"], (30, 90)):
        n = v["units"]
        v["metrics"]["slow_requests"] = {
            "n": n, "sum": slow, "sum_squares": slow, "denominator_sum": n, "denominator_sum_squares": n,
            "sum_products": slow,
        }  # fmt: skip
    data, _ = summary.parse(doc)
    assert "slow_requests" not in [g.metric for g in data.settings.guardrails], "no threshold: not guarded"
    data, _ = summary.parse({**doc, "slow_request": "250ms"})
    assert [m.name for m in data.metrics] == ["revenue", "slow_requests"] and data.is_ratio("slow_requests")
    assert data.settings.guardrails[-1].metric == "slow_requests"


def test_analysis_settings_are_parsed_by_the_router_model() -> None:
    settings = {
        "alpha": 0.01,
        "min_units_per_arm": 100,
        "max_duration": "7d",
        "ramp": [10, 50],
        "guardrails": [{"metric": "revenue", "direction": "increase", "margin": 0.05, "relative": True}],
        "bandit": {"enabled": True, "floor": 0.1},
    }
    data, _ = summary.parse(example(analysis=settings))
    assert data.settings.alpha == 0.01
    assert data.settings.max_duration_s == 7 * 86400
    assert data.settings.ramp == (10.0, 50.0)
    assert data.settings.guardrails[0].metric == "revenue"
    assert data.settings.bandit.enabled


def test_elapsed_accepts_durations() -> None:
    assert summary.parse(example(elapsed="3d"))[1] == 3 * 86400
    assert summary.parse(example(elapsed=90))[1] == 90


def test_strata_by_epoch() -> None:
    doc = example(
        epochs=[
            {"epoch": 1, "weights": {"control": 90, "candidate": 10}, "since": 1000.0},
            {"epoch": 2, "weights": {"control": 1, "candidate": 1}},
        ]
    )
    for v in doc["variants"]:
        stratum = {"units": v.pop("units"), "metrics": v.pop("metrics")}
        v["strata"] = [{"epoch": 1, **stratum}, {"epoch": 2, **stratum}]
    data, _ = summary.parse(doc)
    assert data.epoch_ids == (1, 2)
    assert data.epochs[0].weights == {"control": 90.0, "candidate": 10.0}
    assert data.epochs[1].weights == {"control": 50.0, "candidate": 50.0}
    assert data.epochs[0].since == 1000.0
    assert data.control.units == 2 * 3407
    assert len(data.samples("control", "revenue")) == 2


def test_a_missing_stratum_is_an_empty_sample() -> None:
    doc = example(
        epochs=[{"epoch": 1, "weights": {"control": 1}}, {"epoch": 2, "weights": {"control": 1, "candidate": 1}}]
    )
    doc["variants"][0]["strata"] = [
        {"epoch": 1, "units": doc["variants"][0].pop("units"), "metrics": doc["variants"][0].pop("metrics")}
    ]
    doc["variants"][1]["strata"] = [
        {"epoch": 2, "units": doc["variants"][1].pop("units"), "metrics": doc["variants"][1].pop("metrics")}
    ]
    data, _ = summary.parse(doc)
    assert data.samples("candidate", "revenue")[0] == Sample(0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["variants"][1]["metrics"]["revenue"].update(n=-1),
            "s.json: variants[1].metrics.revenue.n: must be >= 0, got -1",
        ),
        (
            lambda d: d["variants"][1]["metrics"]["revenue"].update(n=1.5),
            "variants[1].metrics.revenue.n: must be an integer",
        ),
        (
            lambda d: d["variants"][0]["metrics"]["revenue"].update(sum="12"),
            "variants[0].metrics.revenue.sum: must be a number, got str",
        ),
        (
            lambda d: d["variants"][0]["metrics"]["revenue"].update(sum=float("nan")),
            "variants[0].metrics.revenue.sum: must be finite",
        ),
        (
            lambda d: d["variants"][0]["metrics"]["revenue"].pop("sum_squares"),
            "variants[0].metrics.revenue.sum_squares: is required for a continuous metric",
        ),
        (
            lambda d: d["variants"][0]["metrics"]["revenue"].update(sum_squares=1.0),
            "variants[0].metrics.revenue.sum_squares: must be >= sum**2/n",
        ),
        (
            lambda d: d["variants"][0]["metrics"]["revenue"].update(denominator_sum=5),
            "variants[0].metrics.revenue.denominator_sum_squares: is required for a ratio metric",
        ),
        (
            lambda d: d["variants"][0]["metrics"]["revenue"].update(sum_sq=1),
            "variants[0].metrics.revenue.sum_sq: unknown key",
        ),
        (
            lambda d: d["variants"][0]["metrics"].pop("revenue"),
            "variants[0].metrics.revenue: is required (declared in metrics)",
        ),
        (
            lambda d: d["variants"][0]["metrics"].update(clicks={"n": 1, "sum": 1}),
            "variants[0].metrics.clicks: unknown metric; declare it in metrics",
        ),
        (lambda d: d["variants"][0].pop("units"), "variants[0].units: is required"),
        (lambda d: d["variants"][0].update(colour="red"), "variants[0].colour: unknown key"),
        (lambda d: d["variants"][1].update(weight=-5), "variants[1].weight: must be >= 0, got -5"),
        (lambda d: d["variants"][1].update(name="control"), "variants[1].name: duplicate name 'control'"),
        (lambda d: d["variants"].pop(), "variants: needs two or more variants"),
        (lambda d: d.pop("variants"), "variants: is required"),
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (lambda d: d.update(analysis={"alpha": 2}), "analysis.alpha: must be <= 0.5, got 2"),
        (lambda d: d["metrics"][0].update(kind="count"), "metrics[0].kind: must be one of binary, continuous"),
        (lambda d: d.update(elapsed="soon"), "elapsed: must be a duration"),
        (lambda d: d["variants"][0].update(strata=[]), "epochs: is required when variants give strata"),
    ],
)
def test_bad_input_names_the_path(mutate: Any, message: str) -> None:
    doc = example()
    mutate(doc)
    assert message in error(doc)


def test_binary_sum_must_not_exceed_n() -> None:
    doc = example(metrics=[{"name": "conversion", "kind": "binary"}])
    for v in doc["variants"]:
        v["metrics"] = {"conversion": {"n": 10, "sum": 11}}
    assert "variants[0].metrics.conversion.sum: must be between 0 and n=10" in error(doc)


def test_ratio_shape_must_agree_across_variants() -> None:
    doc = example()
    doc["variants"][0]["metrics"]["revenue"] |= {
        "denominator_sum": 5000,
        "denominator_sum_squares": 9000,
        "sum_products": 2100.5,
    }
    assert "variants[1].metrics.revenue: lacks denominator sums unlike the variants before" in error(doc)


def test_a_summary_must_be_an_object() -> None:
    assert error([1, 2]) == "s.json: must be an object, got list"


def test_stratum_epochs_must_be_listed() -> None:
    doc = example(epochs=[{"epoch": 1, "weights": {"control": 1, "candidate": 1}}])
    doc["variants"][0]["strata"] = [{"epoch": 3, "units": 1, "metrics": doc["variants"][0].pop("metrics")}]
    del doc["variants"][0]["units"]
    assert "variants[0].strata[0].epoch: epoch 3 is not listed in epochs" in error(doc)


def test_load_reads_json_and_jsonl(tmp_path: Path) -> None:
    single = tmp_path / "one.json"
    single.write_text(json.dumps(EXAMPLE, indent=2))
    assert len(list(summary.load(single))) == 1
    lines = tmp_path / "many.jsonl"
    lines.write_text("\n".join(json.dumps(EXAMPLE) for _ in range(3)) + "\n\n")
    assert len(list(summary.load(lines))) == 3


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    bad = example()
    bad["variants"][1]["units"] = -2
    lines = tmp_path / "many.jsonl"
    lines.write_text(json.dumps(EXAMPLE) + "\n" + json.dumps(bad) + "\n")
    results = summary.load(lines)
    next(results)  # the good first line is yielded before the bad one is read
    with pytest.raises(InputError, match=r"many.jsonl:2: variants\[1\].units: must be >= 0"):
        next(results)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        list(summary.load(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match=r"broken\.json: not valid JSON"):
        list(summary.load(broken))
