"""Sample-ratio mismatch: do the units per arm match the split the weights promised?"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats as sps


@dataclass(frozen=True)
class SrmResult:
    #: Chi-square goodness-of-fit p; 1.0 when fewer than two arms had positive weight.
    p_value: float
    flagged: bool
    #: Units per arm, summed over the epochs used (arms with zero expected left out).
    observed: dict[str, float]
    #: Expected units per arm: Σ_e units_e · w_{e,v} / Σ_v w_{e,v}.
    expected: dict[str, float]


def srm_check(
    units_by_epoch: Mapping[int, Mapping[str, float]],
    weights_by_epoch: Mapping[int, Mapping[str, float]],
    *,
    alpha: float = 0.001,
) -> SrmResult:
    """Chi-square test of the observed units against the weight-integrated expected split.

    units_by_epoch[e][v] is the units assigned to variant v under epoch e;
    weights_by_epoch[e][v] the configured (relative) weights of that epoch. Arms with zero
    expected units are excluded; epochs without weights are skipped. flagged = p < alpha.
    """
    observed, expected = _integrate(units_by_epoch, weights_by_epoch)
    arms = sorted(name for name, value in expected.items() if value > 0)
    p = _chi_square([observed[a] for a in arms], [expected[a] for a in arms])
    return SrmResult(
        p_value=p, flagged=p < alpha, observed={a: observed[a] for a in arms}, expected={a: expected[a] for a in arms}
    )


def _integrate(
    units_by_epoch: Mapping[int, Mapping[str, float]], weights_by_epoch: Mapping[int, Mapping[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Observed and expected units per arm, summed over the epochs that have weights."""
    observed: dict[str, float] = {}
    expected: dict[str, float] = {}
    for epoch, units in units_by_epoch.items():
        weights = {name: max(w, 0.0) for name, w in weights_by_epoch.get(epoch, {}).items()}
        total_weight, total_units = sum(weights.values()), sum(units.values())
        if not total_weight:
            continue  # no split was configured for these units: nothing to expect
        for name in weights.keys() | units.keys():
            expected[name] = expected.get(name, 0.0) + total_units * weights.get(name, 0.0) / total_weight
            observed[name] = observed.get(name, 0.0) + units.get(name, 0.0)
    return observed, expected


def _chi_square(observed: list[float], expected: list[float]) -> float:
    """Pearson goodness of fit with k − 1 df, the expected counts rescaled to the observed total.

    Rescaling matters only when an excluded (zero-weight) arm still received units.
    """
    total_observed, total_expected = sum(observed), sum(expected)
    if len(observed) < 2 or not total_observed:
        return 1.0
    scaled = [e * total_observed / total_expected for e in expected]
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, scaled))
    return float(sps.chi2.sf(statistic, df=len(observed) - 1))
