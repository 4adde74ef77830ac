"""Error rates and power of the decision design (issue 9: Power, defect 5), by simulation.

Two kinds of runs, with fixed seeds and tolerances of three Monte-Carlo standard errors
(3·√(r(1 − r)/B) for B experiments):

- closed loop (`abrouter.analysis.simulate`): each look runs the real `analyzer.analyze`
  (compare, SRM, `decision.decide`) and applies its decision; small sizes, as each look
  costs about 2 ms;
- vectorised: many experiments and looks at once through the same statistics functions
  (`estimate.floored_variance`'s formula, `horizon.p_value`), tied to `compare()` by
  `test_vectorised_design_matches_compare`. Without the policy's gates (ramp, minimum
  units, SRM) a crossing at any look counts, so these rates bound the policy's from above.

bench/sim_sequential.py runs the larger versions; the numbers are in docs/statistics.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from abrouter.analysis import simulate
from abrouter.analysis.stats import estimate, horizon
from abrouter.analysis.stats.compare import compare
from abrouter.analysis.stats.power import sample_size
from abrouter.analysis.stats.sample import Sample

ALPHA = 0.05


def _tolerance(rate: float, experiments: int) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / experiments)


def _design_z(
    rng: np.random.Generator, *, experiments: int, looks: int, per_look: int, rates: tuple[float, float], planned: int
) -> tuple[np.ndarray, np.ndarray]:
    """z (floored binary variances, as compare()) and information time of 50/50 binary experiments, per look."""
    conversions = rng.binomial(per_look, rates, size=(experiments, looks, 2)).cumsum(axis=1).astype(float)
    n = per_look * np.arange(1.0, looks + 1)[None, :, None]
    p, plus_one = conversions / n, (conversions + 1) / (n + 2)
    variance = np.maximum(p * (1 - p) / n, plus_one * (1 - plus_one) / (n + 2)).sum(axis=-1)
    z = (p[..., 1] - p[..., 0]) / np.sqrt(variance)
    return z, np.broadcast_to(estimate.effective_units(n[..., 0], n[..., 0]) / planned, z.shape)


def _design_p(rng: np.random.Generator, **kwargs: object) -> np.ndarray:
    """This look's `p_better_now`, shape (experiments, looks)."""
    z, information = _design_z(rng, **kwargs)  # type: ignore[arg-type]
    return horizon.p_value(z, information, ALPHA)


def test_vectorised_design_matches_compare() -> None:
    z, information = _design_z(
        np.random.default_rng(8), experiments=1, looks=3, per_look=3000, rates=(0.05, 0.06), planned=10_000
    )
    conversions = np.random.default_rng(8).binomial(3000, (0.05, 0.06), size=(1, 3, 2)).cumsum(axis=1)[0]
    for look in range(3):
        n = 3000.0 * (look + 1)
        c = compare(
            Sample(n, float(conversions[look, 0])),
            Sample(n, float(conversions[look, 1])),
            kind="binary",
            direction="increase",
            alpha=ALPHA,
            expected_units=10_000,
            variant="b",
            metric="m",
        )
        assert c.information == pytest.approx(information[0, look], rel=1e-12)
        assert c.p_better_now == pytest.approx(float(horizon.p_value(z[0, look], c.information, ALPHA)), rel=1e-9)
        assert c.p_worse_now == pytest.approx(float(horizon.p_value(-z[0, look], c.information, ALPHA)), rel=1e-9)


@pytest.mark.parametrize(("looks", "experiments"), [(20, 4_000), (2_000, 1_500)])
def test_aa_false_promotion_stays_below_alpha_over_20_and_2000_looks(looks: int, experiments: int) -> None:
    # 12,000 units per arm in the end: the horizon (10,000) and a little beyond.
    p = _design_p(
        np.random.default_rng(looks),
        experiments=experiments,
        looks=looks,
        per_look=12_000 // looks,
        rates=(0.05, 0.05),
        planned=10_000,
    )
    rate = float((p < ALPHA).any(axis=1).mean())
    assert rate <= ALPHA + _tolerance(ALPHA, experiments), f"{rate:.4f}"


def test_power_at_the_fixed_horizon_sample_size_is_at_least_70_percent() -> None:
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)  # 31,231 per arm
    experiments, looks = 2_000, 20
    p = _design_p(
        np.random.default_rng(31),
        experiments=experiments,
        looks=looks,
        per_look=math.ceil(plan.units_per_arm / looks),
        rates=(0.05, 0.055),
        planned=plan.units_per_arm,
    )
    power = float((p < ALPHA).any(axis=1).mean())
    # Measured 0.80 (the mixture it replaces for promotions: 0.50; fixed horizon: 0.80).
    assert power >= 0.70 + _tolerance(0.8, experiments), f"{power:.3f}"


def _fading(lift: float, until: int) -> simulate.Effect:
    """A novelty effect: the candidate converts (1 + lift) times as often until look `until`, then alike."""
    return lambda look, base: base * (1 + lift) if look < until else base


def test_a_faded_novelty_effect_is_not_promoted_more_often_than_alpha() -> None:
    """Defect 5: the promotion rests on evidence gathered at the final ramp step, now.

    Closed loop, default ramp (5% → 25% → 50%), 1,000 new users per look, 24 looks: the
    candidate converts at 10% instead of 5% during the first 10 looks (the 5% step, which
    lasts until it has 500 users there), then at 5% like the control. Promoting it is
    wrong. Before the fix (running-minimum p from an early look + point estimate > 0) this
    test promoted 57% of its 100 runs; now 1%. (30 looks, docs/statistics.md: before 47%,
    this look's design p pooled over all epochs 43%, on the final step's epochs 2%.)
    """
    rng, experiments = np.random.default_rng(7), 100
    settings = simulate.settings_for(expected_units=10_000)
    world = simulate.World(effect=_fading(1.0, until=10))
    outcomes = [simulate.run(rng, world=world, settings=settings, looks=24, per_look=1_000) for _ in range(experiments)]
    promoted = np.mean([o.action == "promote" for o in outcomes])
    assert promoted <= ALPHA + _tolerance(ALPHA, experiments), f"{promoted:.3f}"


def test_closed_loop_aa_with_returning_users_and_the_default_ramp() -> None:
    rng, experiments = np.random.default_rng(12), 60
    settings = simulate.settings_for(expected_units=10_000)
    world = simulate.World(returning=True)
    outcomes = [simulate.run(rng, world=world, settings=settings, looks=16, per_look=1_500) for _ in range(experiments)]
    wrong = np.mean([o.action in ("promote", "rollback") for o in outcomes])
    assert wrong <= 2 * ALPHA + _tolerance(2 * ALPHA, experiments), f"{wrong:.3f}"
    assert np.mean([o.action == "promote" for o in outcomes]) <= ALPHA + _tolerance(ALPHA, experiments)


def test_covariate_world_has_the_correlation_cuped_is_measured_at() -> None:
    rng = np.random.default_rng(4)
    pi = rng.beta(0.1, 1.9, 400_000)
    c = rng.binomial(simulate.COVARIATE_VISITS, pi)
    x = rng.random(pi.size) < pi
    assert np.corrcoef(x, c)[0, 1] == pytest.approx(0.5, abs=0.01)
    assert x.mean() == pytest.approx(0.05, abs=0.002)
