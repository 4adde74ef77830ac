"""`analysis.secondary_correction`: the secondary metrics' sequential p's adjusted over all of them.

The family is every candidate times every user metric but the primary; the adjusted p's
are checked against statsmodels' `multipletests` on the comparisons' own sequential p's,
and shown in the JSON, the text table and the HTML report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from abrouter.analysis import analyzer, html_report, report, summary
from abrouter.analysis.analyzer import AnalysisResult
from abrouter.contract import experiment as model

SECONDARY = ("clicks", "shares", "saves", "returns", "follows")
NOW = 1_700_000_000.0


def _binary(n: int, rate: float) -> dict[str, float]:
    return {"n": n, "sum": round(n * rate)}


def doc(correction: str | None, *, rates: dict[str, tuple[float, float, float]] | None = None) -> dict[str, Any]:
    """Control, b and c, a primary and five secondary binary metrics; `rates` per metric (control, b, c)."""
    rates = rates or {
        "conversion": (0.10, 0.10, 0.10),
        "clicks": (0.20, 0.23, 0.20),  # b clearly better
        "shares": (0.05, 0.056, 0.05),  # b a little
        "saves": (0.10, 0.10, 0.11),  # c a little
        "returns": (0.30, 0.30, 0.30),
        "follows": (0.02, 0.02, 0.02),
    }
    names = ("control", "b", "c")
    variants = [
        {"name": v, "weight": 1, "units": 6_000, "metrics": {m: _binary(6_000, r[i]) for m, r in rates.items()}}
        for i, v in enumerate(names)
    ]
    out: dict[str, Any] = {
        "metrics": [{"name": m, "kind": "binary"} for m in rates],
        "variants": variants,
    }
    if correction is not None:
        out["analysis"] = {"secondary_correction": correction}
    return out


def analyse(d: dict[str, Any]) -> AnalysisResult:
    data, _ = summary.parse(d)
    return analyzer.analyze(data, now=NOW)


def raw_p(result: AnalysisResult) -> dict[tuple[str, str], float]:
    return {(c.variant, c.metric): c.sequential_p_value for c in result.comparisons}


@pytest.mark.parametrize(("correction", "method"), [("bh", "fdr_bh"), ("holm", "holm")])
def test_the_adjusted_p_matches_statsmodels_over_every_secondary_comparison(correction: str, method: str) -> None:
    result = analyse(doc(correction))
    family = [(v, m) for v in ("b", "c") for m in SECONDARY]
    assert sorted(result.secondary) == sorted(family)  # not the primary, not the built-ins
    p = raw_p(result)
    expected = multipletests([p[k] for k in family], method=method)[1]
    assert [result.secondary[k] for k in family] == pytest.approx(list(expected), abs=1e-12)
    # Not vacuous: the data has signals, and the correction changes their p's.
    assert min(p[k] for k in family) < 0.05
    assert any(result.secondary[k] > p[k] + 1e-9 for k in family)


def test_none_is_the_default_and_adjusts_nothing() -> None:
    assert model.AnalysisSettings().secondary_correction == "none"
    result = analyse(doc(None))
    assert result.secondary == {}
    out = result.to_dict()
    assert out["secondary_correction"] == "none"
    assert all(c["sequential_p_value_adjusted"] is None for c in out["comparisons"])
    text = report.render(result)
    assert "BH seq p" not in text and "secondary comparisons" not in text


def test_the_json_carries_the_adjusted_p_on_secondary_comparisons_only() -> None:
    result = analyse(doc("bh"))
    out = result.to_dict()
    assert out["secondary_correction"] == "bh"
    for c in out["comparisons"]:
        key = (c["variant"], c["metric"])
        if key in result.secondary:
            assert c["sequential_p_value_adjusted"] == pytest.approx(result.secondary[key])
        else:
            assert c["metric"] not in SECONDARY and c["sequential_p_value_adjusted"] is None


def test_the_table_and_the_html_report_show_the_adjusted_p() -> None:
    d = doc("bh")
    result = analyse(d)
    text = report.render(result)
    shown = result.secondary[("b", "clicks")]
    assert f"BH seq p {report.explain.p(shown)}" in text
    assert "adjusted over 10 secondary comparisons (Benjamini-Hochberg" in text
    spec = model.parse(
        {
            "name": "s",
            "unit": {"header": "X-User-Id"},
            "variants": [{"name": v["name"], "upstream": f"http://{v['name']}", "weight": 33} for v in d["variants"]],
            "metrics": d["metrics"],
            "analysis": d["analysis"],
        }
    )
    page = html_report.render(spec, result, [])
    assert "sequential p, BH-adjusted over the secondary metrics" in page
    assert f"<td>{shown:,.4g}</td>" in page


def test_a_rolled_back_candidate_stays_in_the_family() -> None:
    d = doc("bh")
    d["variants"][2]["weight"] = 0  # c rolled back
    result = analyse(d)
    assert len(result.secondary) == 10
    p = raw_p(result)
    family = sorted(result.secondary)
    assert [result.secondary[k] for k in family] == pytest.approx(
        list(multipletests([p[k] for k in family], method="fdr_bh")[1]), abs=1e-12
    )


def test_a_comparison_without_a_p_counts_as_one_and_is_reported_as_nan() -> None:
    rates = {m: (0.1, 0.12, 0.1) for m in ("conversion", *SECONDARY)}
    rates["follows"] = (0.0, 0.0, 0.0)  # zero variance: insufficient data
    result = analyse(doc("bh", rates=rates))
    assert math.isnan(result.secondary[("b", "follows")])
    ok = {(c.variant, c.metric): c.status == "ok" for c in result.comparisons}
    assert not ok[("b", "follows")] and not ok[("c", "follows")]
    p = raw_p(result)
    family = [(v, m) for v in ("b", "c") for m in SECONDARY]
    ones = [p[k] if ok[k] else 1.0 for k in family]
    expected = dict(zip(family, multipletests(np.array(ones), method="fdr_bh")[1]))
    assert {k: result.secondary[k] for k in family if ok[k]} == pytest.approx(
        {k: expected[k] for k in family if ok[k]}, abs=1e-12
    )
