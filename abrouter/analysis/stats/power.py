"""Sample size for a conversion experiment (`abrouter plan`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps

CONVENTION = (
    "two-sided two-proportion z-test, unpooled variance p1(1-p1) + p2(1-p2) under H1, "
    "Bonferroni alpha/(variants-1) over the comparisons with the control; fixed horizon "
    "(the analyzer's sequential promotion test has about this power here when "
    "expected_units_per_arm is set to this n, see docs/statistics.md)"
)


@dataclass(frozen=True)
class Plan:
    units_per_arm: int
    total_units: int
    baseline: float
    target: float
    alpha: float
    power: float
    variants: int
    convention: str


def sample_size(
    *,
    baseline: float,
    mde: float,
    relative: bool,
    power: float = 0.8,
    alpha: float = 0.05,
    variants: int = 2,
) -> Plan:
    """Units per arm for a two-sided two-proportion z-test with unpooled variance under H1.

    n = (z_{1−α'/2} + z_{power})² · (p₁(1−p₁) + p₂(1−p₂)) / (p₂ − p₁)², rounded up, with
    α' = alpha / (variants − 1) (Bonferroni over the comparisons with the control).
    target p₂ = baseline·(1 + mde) if relative else baseline + mde.
    """
    target = baseline * (1 + mde) if relative else baseline + mde
    _validate(baseline, target, power, alpha, variants)
    per_test_alpha = alpha / (variants - 1)
    z = sps.norm.isf(per_test_alpha / 2) + sps.norm.ppf(power)
    variance = baseline * (1 - baseline) + target * (1 - target)
    units = math.ceil(z**2 * variance / (target - baseline) ** 2)
    return Plan(
        units_per_arm=units,
        total_units=units * variants,
        baseline=baseline,
        target=target,
        alpha=alpha,
        power=power,
        variants=variants,
        convention=CONVENTION,
    )


def _validate(baseline: float, target: float, power: float, alpha: float, variants: int) -> None:
    if not 0 < baseline < 1:
        raise ValueError(f"baseline: must be in (0, 1), got {baseline}")
    if not 0 < target < 1 or target == baseline:
        raise ValueError(f"mde: the target rate must be in (0, 1) and differ from the baseline, got {target}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power: must be in (0, 1), got {alpha} and {power}")
    if variants < 2:
        raise ValueError(f"variants: must be >= 2 (control included), got {variants}")
