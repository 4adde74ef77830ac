"""`stats.clock`: the decision design's information clock (issue 18, finding 6).

Monte-Carlo error of a rate r over R runs: √(r(1 − r)/R).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from abrouter.analysis import simulate
from abrouter.analysis.stats import clock, estimate
from abrouter.analysis.stats.compare import FRESH, compare
from abrouter.analysis.stats.sample import Sample
from abrouter.analysis.stats.stability import Anchor

ALPHA = 0.05


def _sums(rng: np.random.Generator, rates: list[float], per_look: int) -> list[tuple[Sample, Sample]]:
    """Cumulative control and candidate Samples after each look of `per_look` fresh units per arm."""
    out, sc, st, n = [], 0.0, 0.0, 0
    for rate in rates:
        sc += rng.binomial(per_look, rate)
        st += rng.binomial(per_look, rate)
        n += per_look
        out.append((Sample(float(n), sc), Sample(float(n), st)))
    return out


def test_the_clock_is_the_variance_of_the_sum_over_its_planned_value() -> None:
    """t = U/U*: U = n²·V now, U* = n*·n₁·V₁ at the reference; the units clock while n·V stays put."""
    ref = Anchor(0, 0.1, 0.0, 2 * 0.05 / 1_000)  # 1,000 units per arm, per-unit variance 0.05 per arm
    same = Anchor(0, 0.4, 0.0, 2 * 0.05 / 4_000)
    assert clock.on_information(same, ref).information == pytest.approx(0.4)
    doubled = Anchor(0, 0.4, 0.0, 2 * 0.10 / 4_000)  # later units vary twice as much
    n_star, n, v = 10_000, 4_000, doubled.variance
    assert clock.on_information(doubled, ref).information == pytest.approx(n**2 * v / (n_star * 1_000 * ref.variance))
    # Without a reference, or one of other data (another start), the units clock stays.
    assert clock.on_information(doubled, None) == doubled
    assert clock.on_information(doubled, Anchor(3, 0.1, 0.0, ref.variance)) == doubled


def test_the_reference_follows_the_looks_until_it_is_pinned_and_resets_on_new_data() -> None:
    early, later = Anchor(0, 0.01, 0.0, 1e-3), Anchor(0, 0.02, 0.0, 5e-4)
    assert clock.reference(None, early) == early
    assert clock.reference(early, later) == later  # below PIN_AT: this look's
    pinned = Anchor(0, clock.PIN_AT, 0.0, 2e-4)
    assert clock.reference(pinned, Anchor(0, 0.5, 0.0, 1e-5)) == pinned  # at PIN_AT: for good
    new_start = Anchor(2, 0.01, 0.0, 1e-3)
    assert clock.reference(pinned, new_start) == new_start  # the final ramp step began again


def test_compare_runs_the_design_on_the_information_clock_and_hands_the_reference_on() -> None:
    """A base rate rising 2% -> 8%: the later look's information is U/U*, above the units clock."""
    rng = np.random.default_rng(4)
    looks = _sums(rng, [0.02] * 3 + [0.08] * 3, per_look=1_000)
    running, first = FRESH, None
    for control, candidate in looks:
        c = compare(
            control,
            candidate,
            kind="binary",
            direction="increase",
            alpha=ALPHA,
            expected_units=10_000,
            previous=running,
            variant="candidate",
            metric="m",
        )
        first = first or c
        running = c.running()
    assert running.reference is not None and running.reference.information == pytest.approx(0.1)
    control, candidate = looks[-1]
    est = estimate.combine([control], [candidate], estimate.arm_variance("binary"), estimate.floored_variance("binary"))
    units_time = est.units_per_arm / 10_000
    assert c.information == pytest.approx(
        float(clock.time(units_time, est.sequential_variance, 0.1, running.reference.variance))
    )
    assert c.information > 1.5 * units_time  # the later units carry more variance: the clock runs ahead


@pytest.mark.parametrize("rates", [(0.02, 0.08), (0.08, 0.02)], ids=["rising", "falling"])
def test_a_drifting_base_rate_keeps_the_designs_aa_crossing_within_alpha(rates: tuple[float, float]) -> None:
    """500 looks of 80 units per arm, 4,000 paths (bench/sim_clock.py runs 10,000 x 2,000 looks)."""
    paths = 4_000
    rng = np.random.default_rng(5)
    _, information = simulate.drift_crossings(rng, np.linspace(*rates, 500), paths=paths, per_look=80)
    assert information <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / paths), f"{information:.4f}"


def test_a_ratio_metric_keeps_the_units_clock() -> None:
    rng = np.random.default_rng(6)
    exposures = rng.integers(1, 20, size=(2, 2_000)).astype(float)
    clicks = rng.binomial(exposures.astype(int), 0.05).astype(float)
    control, candidate = (Sample.from_ratio(clicks[i], exposures[i]) for i in range(2))
    c = compare(
        control,
        candidate,
        kind="continuous",
        direction="increase",
        alpha=ALPHA,
        expected_units=10_000,
        variant="candidate",
        metric="ctr",
    )
    assert c.reference is None and c.information == pytest.approx(0.2)  # 2,000 units per arm of 10,000
