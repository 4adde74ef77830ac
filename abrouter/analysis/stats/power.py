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


@dataclass(frozen=True)
class Rollout:
    """The users an experiment takes with a ramp and a burn-in, on top of the plan's n (`rollout`)."""

    #: Users (all arms) the ramp's steps before the final one take, when each moves on as
    #: soon as every arm has `min_units_per_arm` units in it (guardrails passing at once).
    ramp_units: int
    #: Users (all arms) arriving during the burn-in (`burn_in_s` at `traffic`); None without traffic.
    burn_in_units: int | None
    #: Users (all arms) in the final step for `units_per_arm` effective units per arm.
    final_units: int
    #: The total: the canary phase (the ramp's users, or the burn-in's if more: the step into
    #: the final one waits for both) plus the final step's. None when a burn-in with a ramp
    #: needs `traffic` to be counted.
    total_units: int | None
    #: Days at `traffic` (at least the burn-in); None without traffic.
    days: float | None


def rollout(
    plan: Plan,
    *,
    ramp: tuple[float, ...],
    min_units_per_arm: int,
    burn_in_s: float,
    traffic: float | None,
    balanced: bool = False,
) -> Rollout:
    """The users the plan's n takes with the analyzer's ramp and burn-in (issue 18, finding 2).

    The decision design counts only the final ramp step's data, and the step into it waits
    for `burn_in` since the start (docs/statistics.md, "Novelty"), so n per arm must be
    gathered there: with the candidates' share f split over k candidates, the effective
    (harmonic) units per arm of a candidate against the control are 2·a·b/(a + b) per user,
    a = 1 − f, b = f/k, and the final step needs n·(a + b)/(2ab) users. Each earlier step s
    needs `min_units_per_arm` in its smallest arm: min_units / min(1 − s, s/k) users. The
    canary phase lasts until both are done: max(ramp users, `traffic` × `burn_in_s`).
    Without a ramp the burn-in only delays the promotion (its data counts). `ramp` in
    percent; () is the even split. `traffic` is in users per day.

    `balanced` (`analysis.ramp_rest`): at step s the control, like each candidate, has s/k
    and the rest variant what is left, outside the comparison; the final step then needs
    n·k/f users (n/f·k per arm of f/k), more than the unbalanced split's when f < k/(k+1)
    (the rest's users are not counted), the same at the default final step of 50% with one
    candidate. Each earlier step needs min_units·k/s.
    """
    k = plan.variants - 1
    final = ramp[-1] / 100 if ramp else k / plan.variants
    a, b = (final / k if balanced and ramp else 1 - final), final / k
    final_units = math.ceil(plan.units_per_arm * (a + b) / (2 * a * b))
    ramp_units = sum(math.ceil(min_units_per_arm / _smallest_arm(s / 100, k, balanced)) for s in ramp[:-1])
    burn_in = math.ceil(traffic * burn_in_s / 86400) if traffic else None
    if not ramp:
        total: int | None = final_units
    elif burn_in is not None:
        total = max(ramp_units, burn_in) + final_units
    else:
        total = ramp_units + final_units if burn_in_s <= 0 else None
    days = max(total / traffic, burn_in_s / 86400) if traffic and total is not None else None
    return Rollout(ramp_units=ramp_units, burn_in_units=burn_in, final_units=final_units, total_units=total, days=days)


def _smallest_arm(share: float, k: int, balanced: bool) -> float:
    """The smallest compared arm's share at a step where the k candidates have `share` in all."""
    return share / k if balanced else min(1 - share, share / k)


def _validate(baseline: float, target: float, power: float, alpha: float, variants: int) -> None:
    if not 0 < baseline < 1:
        raise ValueError(f"baseline: must be in (0, 1), got {baseline}")
    if not 0 < target < 1 or target == baseline:
        raise ValueError(f"mde: the target rate must be in (0, 1) and differ from the baseline, got {target}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power: must be in (0, 1), got {alpha} and {power}")
    if variants < 2:
        raise ValueError(f"variants: must be >= 2 (control included), got {variants}")
