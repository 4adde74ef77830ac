"""`stats.stability`: the data after an anchor, the decline test, and the anchors' bookkeeping.

Monte-Carlo error of a rate r over R runs: √(r(1 − r)/R).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from abrouter.analysis.stats import estimate
from abrouter.analysis.stats.sample import Sample
from abrouter.analysis.stats.stability import KEEP, Anchor, advance, decline, since


def _anchor(control: Sample, candidate: Sample, *, at: float = math.nan) -> Anchor:
    est = estimate.combine([control], [candidate], estimate.arm_variance("binary"), estimate.floored_variance("binary"))
    return Anchor(0, est.units_per_arm / 10_000, est.difference, est.sequential_variance, at)


def test_the_estimate_after_an_anchor_is_the_later_datas_own() -> None:
    """Δ̂ and V of the data after the anchor, from the cumulative estimates, match the later data's own."""
    rng = np.random.default_rng(1)
    first = (Sample(4_000, float(rng.binomial(4_000, 0.05))), Sample(4_000, float(rng.binomial(4_000, 0.06))))
    later = (Sample(6_000, float(rng.binomial(6_000, 0.05))), Sample(6_000, float(rng.binomial(6_000, 0.05))))
    a = _anchor(*first)
    both = _anchor(first[0] + later[0], first[1] + later[1])
    own = _anchor(*later)
    rest = since(a, both)
    assert rest is not None
    assert rest.information == pytest.approx(own.information)
    # Exact only when the per-unit variance is the same in both parts; 5% vs 5.5% is close.
    assert rest.difference == pytest.approx(own.difference, abs=0.1 * math.sqrt(own.variance))
    assert rest.variance == pytest.approx(own.variance, rel=0.05)


def test_a_constant_effect_declines_at_the_nominal_rate_and_a_faded_one_is_caught() -> None:
    """Brownian increments (a constant effect): P(decline p < 0.05) = 5%; an effect that stops: mostly flagged."""
    rng, runs = np.random.default_rng(2), 4_000
    variance_per_unit = 0.1

    def decline_p(early_effect: float, late_effect: float) -> float:
        n1, n2 = 2_000, 2_000
        d1 = rng.normal(early_effect, math.sqrt(variance_per_unit / n1))
        d2 = rng.normal(late_effect, math.sqrt(variance_per_unit / n2))
        a = Anchor(0, n1 / 1e4, d1, variance_per_unit / n1, at=1.0)
        now = Anchor(0, (n1 + n2) / 1e4, (n1 * d1 + n2 * d2) / (n1 + n2), variance_per_unit / (n1 + n2), at=2.0)
        return decline(advance((), a), now, increase=True).p_value

    constant = np.mean([decline_p(0.02, 0.02) < 0.05 for _ in range(runs)])
    se = math.sqrt(0.05 * 0.95 / runs)
    assert abs(constant - 0.05) < 3 * se, f"{constant:.4f} ± {se:.4f}"
    faded = np.mean([decline_p(0.03, 0.0) < 0.05 for _ in range(runs)])
    # z of the drop: 0.03 / sqrt(2 · 0.1/2000) = 3.0, so P(z > 1.645) = 0.91.
    assert faded == pytest.approx(0.91, abs=3 * math.sqrt(0.91 * 0.09 / runs))
    # The other direction (a metric to decrease): the same drop is an increase, not flagged.
    a = Anchor(0, 0.2, 0.03, 5e-5, at=1.0)
    now = Anchor(0, 0.4, 0.015, 2.5e-5, at=2.0)
    assert decline((a,), now, increase=True).p_value < 0.05
    assert decline((a,), now, increase=False).p_value > 0.95


def test_the_split_is_half_way_in_time_when_looks_carry_a_clock() -> None:
    anchors = tuple(Anchor(0, 0.1 * i, 0.01, 1e-4 / i, at=float(i)) for i in range(1, 9))
    now = Anchor(0, 0.9, 0.01, 1e-4 / 9, at=9.0)
    assert decline(anchors, now, increase=True).split == pytest.approx(0.5)  # at = 5 = 1 + (9 - 1)/2
    untimed = tuple(replace_at(a) for a in anchors)
    assert decline(untimed, replace_at(now), increase=True).split == pytest.approx(0.4)  # information <= 0.45


def replace_at(a: Anchor) -> Anchor:
    return Anchor(a.start, a.information, a.difference, a.variance)


def test_anchors_reset_on_a_new_start_and_stay_few() -> None:
    anchors: tuple[Anchor, ...] = ()
    for i in range(1, 1_000):
        anchors = advance(anchors, Anchor(0, 0.01 * i, 0.0, 1.0 / i, at=float(i)))
    assert len(anchors) <= KEEP
    assert anchors[0].at == 1.0 and anchors[-1].at == 999.0
    assert advance(anchors, Anchor(3, 0.01, 0.0, 1.0, at=1_000.0)) == (Anchor(3, 0.01, 0.0, 1.0, at=1_000.0),)
    assert advance(anchors, Anchor(0, 0.0, math.nan, math.nan)) == anchors  # no estimate: nothing to keep
