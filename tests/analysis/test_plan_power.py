"""Issue 18, finding 2: `plan`'s total users, with the default ramp and burn-in, give the planned power.

Today's main planned 62,462 users for baseline 5%, +10% relative (31,231 per arm) and did
not count the ramp: with the default ramp the power at those users was 55.5% ± 3.5%. The
plan now adds the canary phase: the ramp's 12,000 users or those arriving during the
burn-in, whichever is more. With the default week of burn-in the canary phase is the
burn-in's: at the traffic that fits the plan in 14 days (8,923 a day), 7 days of it, so
124,924 users. Closed loop at that total, 40 looks (bench/sim_plan.py; docs/statistics.md
gives the numbers); this test runs 200 (seed 2) and asks for ≥ 70% (the issue's 75% less
about 2 SE).
"""

from __future__ import annotations

import math

import numpy as np

from abrouter.analysis import simulate
from abrouter.analysis.stats.power import rollout, sample_size

DAYS = 14.0


def test_power_at_the_plans_total_with_the_default_ramp() -> None:
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    settings = simulate.settings_for(expected_units=plan.units_per_arm)
    kw = dict(ramp=settings.ramp, min_units_per_arm=settings.min_units_per_arm)
    burn_days = settings.burn_in_s / 86_400
    without = rollout(plan, burn_in_s=0.0, traffic=None, **kw)  # type: ignore[arg-type]
    # 14 days hold the canary phase, max(ramp users, traffic x burn-in days), and the final step.
    traffic = max((without.ramp_units + without.final_units) / DAYS, without.final_units / (DAYS - burn_days))
    steps = rollout(plan, burn_in_s=settings.burn_in_s, traffic=traffic, **kw)  # type: ignore[arg-type]
    assert steps.total_units is not None and steps.days is not None and abs(steps.days - DAYS) < 0.01
    rng, runs, looks = np.random.default_rng(2), 200, 40
    world = simulate.World(effect=simulate.constant(0.10))
    per_look = math.ceil(steps.total_units / looks)
    outcomes = [simulate.run(rng, world=world, settings=settings, looks=looks, per_look=per_look) for _ in range(runs)]
    power = float(np.mean([o.action == "promote" for o in outcomes]))
    assert power >= 0.70, f"{power:.3f} ± {math.sqrt(power * (1 - power) / runs):.3f}"
