"""Issue 18, finding 2: `plan`'s total users, with the default ramp and burn-in, give the planned power.

Today's main planned 62,462 users for baseline 5%, +10% relative (31,231 per arm) and did
not count the ramp: with the default ramp the power at those users was 55.5% ± 3.5%. The
plan now adds the ramp's 12,000 users and the burn-in's day: 80,190 users in 14 days.
Closed loop at that total, 40 looks (bench/sim_plan.py, 300 runs, seed 1): 78.3% ± 2.4%;
this test runs 200 (seed 2, ≈ 5 s) and asks for ≥ 70% (the issue's 75% less about 2 SE).
"""

from __future__ import annotations

import math

import numpy as np

from abrouter.analysis import simulate
from abrouter.analysis.stats.power import rollout, sample_size


def test_power_at_the_plans_total_with_the_default_ramp() -> None:
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    settings = simulate.settings_for(expected_units=plan.units_per_arm)
    kw = dict(ramp=settings.ramp, min_units_per_arm=settings.min_units_per_arm)
    without = rollout(plan, burn_in_s=0.0, traffic=None, **kw)  # type: ignore[arg-type]
    traffic = (without.ramp_units + without.final_units) / 14.0  # the ramp outlasts the day's burn-in here
    steps = rollout(plan, burn_in_s=86_400.0, traffic=traffic, **kw)  # type: ignore[arg-type]
    assert steps.total_units == without.total_units and steps.days is not None and abs(steps.days - 14.0) < 0.01
    rng, runs, looks = np.random.default_rng(2), 200, 40
    world = simulate.World(effect=simulate.constant(0.10))
    per_look = math.ceil(steps.total_units / looks)
    outcomes = [simulate.run(rng, world=world, settings=settings, looks=looks, per_look=per_look) for _ in range(runs)]
    power = float(np.mean([o.action == "promote" for o in outcomes]))
    assert power >= 0.70, f"{power:.3f} ± {math.sqrt(power * (1 - power) / runs):.3f}"
