"""The p95 beside the latency guardrail: analyze's JSON and table and the HTML report carry it.

The data is a summary's (no histograms) with the router's histograms of the current epoch
added per arm, as the reader adds them (`Arm.latency`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from abrouter.analysis import analyzer, html_report, report, summary
from abrouter.analysis.data import ExperimentData
from abrouter.analysis.stats import quantile
from abrouter.contract import experiment as model
from abrouter.contract import keys
from tests.analysis.stats.test_stats_quantile import binned

NOW = 1_700_000_000.0
DOC = {
    "metrics": [{"name": "conversion", "kind": "binary"}],
    "variants": [
        {"name": "control", "weight": 50, "units": 4_000, "metrics": {"conversion": {"n": 4_000, "sum": 400}}},
        {"name": "candidate", "weight": 50, "units": 4_000, "metrics": {"conversion": {"n": 4_000, "sum": 410}}},
    ],
}


def with_latency(data: ExperimentData, per_arm: dict[str, dict[int, tuple[int, ...]]]) -> ExperimentData:
    arms = tuple(dataclasses.replace(a, latency=per_arm.get(a.name, {})) for a in data.arms)
    return dataclasses.replace(data, arms=arms)


def histograms(seed: int, slower: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return binned(rng.lognormal(np.log(20), 0.6, 8_000)), binned(slower * rng.lognormal(np.log(20), 0.6, 8_000))


def test_the_current_epochs_p95_difference_is_in_the_json() -> None:
    data, _ = summary.parse(DOC)
    control, candidate = histograms(1, 1.5)
    older = binned(np.full(500, 5.0))  # an earlier epoch: left out
    epoch = data.current_epoch
    data = with_latency(data, {"control": {epoch: control, epoch - 1: older}, "candidate": {epoch: candidate}})
    result = analyzer.analyze(data, now=NOW)
    (d,) = result.latency_p95
    assert d == quantile.difference(control, candidate, q=0.95, alpha=0.05, variant="candidate", epoch=epoch)
    assert d.status == "ok" and d.ci_ms[0] > 0  # 50% slower: resolved
    (out,) = result.to_dict()["latency_p95"]
    assert out["variant"] == "candidate" and out["epoch"] == epoch and out["ci_ms"] == list(d.ci_ms)
    assert out["resolution"] == pytest.approx(0.259, abs=1e-3)


def test_no_histograms_no_p95_and_a_rolled_back_candidate_is_left_out() -> None:
    data, _ = summary.parse(DOC)
    assert analyzer.analyze(data, now=NOW).latency_p95 == ()
    assert analyzer.analyze(data, now=NOW).to_dict()["latency_p95"] == []
    doc = {**DOC, "variants": [DOC["variants"][0], {**DOC["variants"][1], "weight": 0}]}
    data, _ = summary.parse(doc)
    control, candidate = histograms(2, 1.0)
    data = with_latency(data, {"control": {data.current_epoch: control}, "candidate": {data.current_epoch: candidate}})
    assert analyzer.analyze(data, now=NOW).latency_p95 == ()


def test_a_candidate_without_requests_in_the_epoch_is_insufficient() -> None:
    data, _ = summary.parse(DOC)
    control, _ = histograms(3, 1.0)
    data = with_latency(data, {"control": {data.current_epoch: control}})
    (d,) = analyzer.analyze(data, now=NOW).latency_p95
    assert (d.status, d.reason, d.requests) == ("insufficient_data", "empty_arm", 0)
    assert "insufficient data: empty_arm" in report.render(analyzer.analyze(data, now=NOW))


def test_the_table_and_the_html_report_show_it_beside_the_guardrails() -> None:
    data, _ = summary.parse(DOC)
    control, candidate = histograms(4, 1.2)
    data = with_latency(data, {"control": {data.current_epoch: control}, "candidate": {data.current_epoch: candidate}})
    result = analyzer.analyze(data, now=NOW)
    (d,) = result.latency_p95
    text = report.render(result)
    assert "latency p95" in text and "histogram buckets 26% wide" in text
    assert f"[{d.ci_ms[0]:+.4g}, {d.ci_ms[1]:+.4g}]" in text
    spec = model.parse(
        {
            "name": "s",
            "unit": {"header": "X-User-Id"},
            "variants": [{"name": v["name"], "upstream": f"http://{v['name']}", "weight": 50} for v in DOC["variants"]],
            "metrics": DOC["metrics"],
        }
    )
    page = html_report.render(spec, result, [])
    guardrails = page[page.index('<section id="guardrails">') : page.index('<section id="guardrails">') + 4_000]
    assert 'id="latency-p95"' in guardrails and "Their buckets are 26% wide" in guardrails
    assert f"{d.ci_ms[0]:+,.4g} .. {d.ci_ms[1]:+,.4g}" in guardrails
    assert math.isfinite(d.relative) and keys.LATENCY_BUCKETS == len(control)
