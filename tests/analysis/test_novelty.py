"""Issue 18, finding 1: a novelty effect that has faded must not be promoted.

The review's world (closed loop through `analyzer.analyze`, `simulate.run`): binary at 5%,
default ramp, 20 looks over 14 days, 3,000 new users per look, `expected_units_per_arm`
10,000; the candidate converts 30% more often during the first 6 looks, then alike. The
ramp reaches its final step after about 5 looks, so the last novelty look lands in the
final step's own data. Today's main promoted 14.2% ± 1.4% of 600 runs (seed 4), all after
the fade; now 1.8% ± 0.5% (bench/sim_novelty.py). This test runs 200 (≈ 3 s) and allows
α + 3 Monte-Carlo SE.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from abrouter.analysis import analyzer, simulate
from abrouter.analysis import data as d
from abrouter.analysis.stats.sample import Sample
from abrouter.contract.model import Metric

ALPHA = 0.05


def _fading(lift: float, until: int) -> simulate.Effect:
    return lambda look, base: base * (1 + lift) if look < until else base


def test_the_reviews_faded_novelty_is_promoted_at_most_alpha() -> None:
    rng, runs = np.random.default_rng(18), 200
    settings = simulate.settings_for(expected_units=10_000)
    world = simulate.World(effect=_fading(0.3, until=6))
    outcomes = [simulate.run(rng, world=world, settings=settings, looks=20, per_look=3_000) for _ in range(runs)]
    promoted = float(np.mean([o.action == "promote" for o in outcomes]))
    assert promoted <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs), f"{promoted:.3f}"


def _data(control: tuple[int, int], candidate: tuple[int, int], *, burn_in: float) -> d.ExperimentData:
    settings = replace(simulate.settings_for(expected_units=10_000, ramp=False), burn_in_s=burn_in)
    arms = tuple(
        d.Arm(name, 50.0, (d.Stratum(1, n, {"m": Sample(float(n), float(s))}),))
        for name, (n, s) in (("control", control), ("candidate", candidate))
    )
    epochs = (d.Epoch(1, {"control": 50.0, "candidate": 50.0}, 0.0),)
    return d.ExperimentData("x", (Metric(name="m", kind="binary"),), arms, epochs, settings, started_at=0.0)


def test_an_effect_that_declined_holds_the_promotion_and_says_so() -> None:
    """+80% in the first 5,000 users per arm, none in the next 15,000: the cumulative test would promote."""
    first = analyzer.analyze(_data((5_000, 250), (5_000, 450), burn_in=0.0), now=86_400.0)
    second_data = _data((20_000, 1_000), (20_000, 1_200), burn_in=0.0)
    second = analyzer.analyze(second_data, now=4 * 86_400.0, previous=first.running())
    c = second.comparisons[0]
    assert c.p_better_now < ALPHA  # the evidence pooled over time says "better"...
    assert c.decline_p < 0.001 and c.late_lift == pytest_approx(0.0, 0.004)  # ...but it all came early
    assert second.decision.action == "continue"
    assert "novelty suspected for candidate on m" in second.decision.reason
    # Without the earlier look there is nothing to split at, and the same data promotes.
    assert analyzer.analyze(second_data, now=4 * 86_400.0).decision.action == "promote"


def test_nothing_is_promoted_during_the_burn_in() -> None:
    """A day's burn-in: the first look after it sets the origin; only data after it is evidence."""
    during = analyzer.analyze(_data((5_000, 250), (5_000, 325), burn_in=86_400.0), now=3_600.0)
    assert during.decision.action == "continue" and math.isnan(during.comparisons[0].p_better_now)
    at_end = analyzer.analyze(
        _data((6_000, 300), (6_000, 390), burn_in=86_400.0), now=86_400.0, previous=during.running()
    )
    assert at_end.decision.action == "continue" and at_end.comparisons[0].information == 0.0
    later = analyzer.analyze(
        _data((26_000, 1_300), (26_000, 1_690), burn_in=86_400.0), now=3 * 86_400.0, previous=at_end.running()
    )
    assert later.comparisons[0].information == 2.0  # 20,000 units per arm after the origin
    assert later.decision.action == "promote", later.decision.reason


def pytest_approx(value: float, tolerance: float) -> object:
    import pytest

    return pytest.approx(value, abs=tolerance)


def test_the_anchors_and_the_origin_survive_the_history() -> None:
    """The real analyzer hands them on through Redis: a look's entry, encoded and decoded, seeds the same state."""
    from abrouter.analysis import history

    first = analyzer.analyze(_data((5_000, 250), (5_000, 325), burn_in=60.0), now=3_600.0)
    second = analyzer.analyze(_data((6_000, 300), (6_000, 390), burn_in=60.0), now=7_200.0, previous=first.running())
    running = second.running()[("candidate", "m")]
    assert running.anchors and running.origin is not None
    decoded = history.decode(history.encode(second, applied=False)).running[("candidate", "m")]
    assert decoded == running
