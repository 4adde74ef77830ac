import math

import pytest
from statsmodels.stats.power import NormalIndPower

from abrouter.analysis.stats.power import sample_size


@pytest.mark.parametrize(
    ("baseline", "target", "power", "alpha"), [(0.05, 0.055, 0.8, 0.05), (0.2, 0.25, 0.9, 0.01), (0.5, 0.45, 0.8, 0.1)]
)
def test_matches_statsmodels_normal_power_with_unpooled_effect_size(
    baseline: float, target: float, power: float, alpha: float
) -> None:
    plan = sample_size(baseline=baseline, mde=target - baseline, relative=False, power=power, alpha=alpha)
    effect = abs(target - baseline) / math.sqrt((baseline * (1 - baseline) + target * (1 - target)) / 2)
    reference = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0)
    # statsmodels also counts rejections in the wrong tail, worth a fraction of a unit here.
    assert plan.units_per_arm == math.ceil(reference) or abs(plan.units_per_arm - reference) < 1
    assert plan.total_units == 2 * plan.units_per_arm


def test_relative_mde_and_bonferroni_for_more_variants() -> None:
    relative = sample_size(baseline=0.05, mde=0.1, relative=True)
    absolute = sample_size(baseline=0.05, mde=0.005, relative=False)
    assert relative.units_per_arm == absolute.units_per_arm and relative.target == pytest.approx(0.055)
    three = sample_size(baseline=0.05, mde=0.1, relative=True, variants=3)
    halved = sample_size(baseline=0.05, mde=0.1, relative=True, alpha=0.025)
    assert three.units_per_arm == halved.units_per_arm and three.total_units == 3 * three.units_per_arm


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(baseline=0.0, mde=0.1),
        dict(baseline=0.5, mde=0.0),
        dict(baseline=0.9, mde=0.2),
        dict(baseline=0.1, mde=0.1, variants=1),
    ],
)
def test_impossible_plans_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        sample_size(relative=False, **kwargs)
