"""Sample size for a conversion experiment (`abrouter plan`)."""

from __future__ import annotations

from dataclasses import dataclass


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
    raise NotImplementedError
