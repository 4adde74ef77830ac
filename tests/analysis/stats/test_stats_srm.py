import pytest
from scipy import stats as sps

from abrouter.analysis.stats.srm import srm_check


def test_52_48_over_20000_units_is_flagged() -> None:
    result = srm_check({1: {"control": 10_400, "candidate": 9_600}}, {1: {"control": 50, "candidate": 50}})
    assert result.flagged
    assert result.p_value == pytest.approx(sps.chisquare([9_600, 10_400], [10_000, 10_000]).pvalue, rel=1e-9)
    assert result.expected == {"candidate": 10_000, "control": 10_000}


def test_balanced_split_is_not_flagged() -> None:
    result = srm_check({1: {"control": 10_070, "candidate": 9_930}}, {1: {"control": 50, "candidate": 50}})
    assert not result.flagged and result.p_value > 0.3


def test_expected_split_integrates_the_weights_over_epochs() -> None:
    units = {1: {"control": 9_500, "candidate": 500}, 2: {"control": 15_000, "candidate": 15_000}}
    weights = {1: {"control": 95, "candidate": 5}, 2: {"control": 50, "candidate": 50}}
    result = srm_check(units, weights)
    assert result.expected == pytest.approx({"control": 24_500, "candidate": 15_500})
    assert not result.flagged and result.p_value == pytest.approx(1.0)
    # The same units judged against the current 50/50 split alone would be a gross mismatch.
    assert sps.chisquare([24_500, 15_500]).pvalue < 1e-50


def test_uneven_epochs_match_scipy_chisquare() -> None:
    units = {3: {"a": 700, "b": 310, "c": 0}, 4: {"a": 400, "b": 420, "c": 410}}
    weights = {3: {"a": 2, "b": 1, "c": 0}, 4: {"a": 1, "b": 1, "c": 1}}
    result = srm_check(units, weights, alpha=0.05)
    total_3, total_4 = 1010, 1230
    expected = [total_3 * 2 / 3 + total_4 / 3, total_3 / 3 + total_4 / 3, total_4 / 3]
    assert result.p_value == pytest.approx(sps.chisquare([1100, 730, 410], expected).pvalue, rel=1e-9)


def test_zero_weight_arms_are_excluded() -> None:
    units = {1: {"control": 5_000, "candidate": 5_000, "retired": 0}}
    weights = {1: {"control": 50, "candidate": 50, "retired": 0}}
    result = srm_check(units, weights)
    assert set(result.observed) == set(result.expected) == {"control", "candidate"}
    assert result.p_value == pytest.approx(1.0)


def test_nothing_to_test_is_not_flagged() -> None:
    assert srm_check({}, {}).p_value == 1.0
    assert not srm_check({1: {"control": 10}}, {1: {"control": 100}}).flagged
    assert not srm_check({1: {"control": 10, "b": 3}}, {}).flagged
