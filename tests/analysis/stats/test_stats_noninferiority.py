import json

import numpy as np
import pytest

from abrouter.analysis.stats import reasons
from abrouter.analysis.stats.noninferiority import NonInferiority, non_inferiority
from abrouter.analysis.stats.sample import Sample

SETTINGS = dict(alpha=0.05, expected_units=10_000, variant="candidate", metric="errors")


def _errors(control: Sample, candidate: Sample, margin: float = 0.01, relative: bool = False) -> NonInferiority:
    return non_inferiority(
        control, candidate, kind="binary", direction="decrease", margin=margin, relative=relative, **SETTINGS
    )


def test_clearly_worse_error_rate_is_a_breach() -> None:
    result = _errors(Sample(5000, 50), Sample(5000, 250))
    assert result.status == "breach"
    assert result.harm == pytest.approx(0.04) and result.lower_bound > 0.01
    assert result.p_value == 1.0


def test_no_errors_in_either_arm_passes_once_there_are_enough_units() -> None:
    assert _errors(Sample(20_000, 0), Sample(20_000, 0)).status == "pass"
    # With few units the floor on the variance keeps the bound honest.
    assert _errors(Sample(30, 0), Sample(30, 0)).status == "inconclusive"


def test_status_agrees_with_the_one_sided_p_value() -> None:
    for errors in range(40, 200, 10):
        result = _errors(Sample(8000, 80), Sample(8000, errors))
        assert (result.status == "pass") == (result.p_value < 0.05)
        assert result.lower_bound < result.harm < result.bound


def test_good_direction_increase_counts_a_lower_candidate_as_harm() -> None:
    result = non_inferiority(
        Sample(10_000, 1000),
        Sample(10_000, 800),
        kind="binary",
        direction="increase",
        margin=0.05,
        relative=True,
        **SETTINGS,
    )
    assert result.harm == pytest.approx(0.2)
    assert result.status == "breach"


def test_relative_margin_on_a_latency_ratio_metric() -> None:
    rng = np.random.default_rng(8)
    d = rng.poisson(5, size=(2, 6000)) + 1
    same = [Sample.from_ratio(rng.gamma(4, 25, d[i].size) * d[i], d[i]) for i in range(2)]
    slow = Sample.from_ratio(rng.gamma(4, 40, d[1].size) * d[1], d[1])
    kw = dict(kind="continuous", direction="decrease", margin=0.2, relative=True, **SETTINGS)
    assert non_inferiority(same[0], same[1], **kw).status == "pass"
    assert non_inferiority(same[0], slow, **kw).status == "breach"


def test_zero_baseline_matters_only_for_relative_margins() -> None:
    absolute = _errors(Sample(5000, 0), Sample(5000, 3))
    relative = _errors(Sample(5000, 0), Sample(5000, 3), margin=0.1, relative=True)
    assert absolute.status == "pass"
    assert (relative.status, relative.reason) == (reasons.INSUFFICIENT, reasons.ZERO_BASELINE)
    json.dumps(relative.to_dict(), allow_nan=False)


def test_empty_arm_is_insufficient_and_negative_margin_is_a_bug() -> None:
    assert _errors(Sample(0, 0), Sample(10, 1)).reason == reasons.EMPTY_ARM
    # Relative SE of a constant-zero candidate is zero even though the difference varies.
    flat = non_inferiority(
        Sample.from_values([1.0, 2.0, 3.0]),
        Sample.from_values([0.0, 0.0, 0.0]),
        kind="continuous",
        direction="decrease",
        margin=0.1,
        relative=True,
        **SETTINGS,
    )
    assert flat.reason == reasons.ZERO_VARIANCE
    with pytest.raises(ValueError):
        _errors(Sample(10, 1), Sample(10, 1), margin=-0.1)
