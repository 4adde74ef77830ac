"""The balanced ramp (`analysis.ramp_rest`): A/A error rates and power at `plan`'s total.

    PYTHONPATH=$PWD .venv/bin/python bench/sim_balanced_ramp.py [--experiments 1000] [--long 60] [--seed 1]

Closed loop (`simulate.run`, the real analyzer and policy), the default ramp 5/25/50 with
the control at each step's candidate share and a rest arm serving the control's rates
outside the comparison (GrowthBook's Safe Rollouts). Printed with one Monte-Carlo SE:

- A/A, fresh users, 20 looks of 3,000 users, no burn-in: false promotions and rollbacks;
- A/A, returning users (Gamma(0.5, 2) propensity, 30% back per look), 20 looks of 1,500;
- A/A, fresh users, 2,000 looks of 60 users (`--long` runs: a look costs milliseconds);
- power at +10% (5% baseline) at `plan --balanced`'s total with the default week of
  burn-in, spread over 40 looks across the default 14 days (as bench/sim_plan.py), next
  to the same runs without the rest arm.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from abrouter.analysis import simulate
from abrouter.analysis.stats.power import rollout, sample_size

DAYS = 14.0


def plan_total(*, balanced: bool) -> int:
    """The plan's total users with the default ramp and burn-in, at the traffic that fits it in 14 days."""
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    settings = simulate.settings_for(expected_units=plan.units_per_arm)
    kw = dict(ramp=settings.ramp, min_units_per_arm=settings.min_units_per_arm, balanced=balanced)
    fixed = rollout(plan, burn_in_s=0.0, traffic=None, **kw)  # type: ignore[arg-type]
    burn_days = settings.burn_in_s / 86400
    traffic = max((fixed.ramp_units + fixed.final_units) / DAYS, fixed.final_units / (DAYS - burn_days))
    full = rollout(plan, burn_in_s=settings.burn_in_s, traffic=traffic, **kw)  # type: ignore[arg-type]
    assert full.total_units is not None
    return full.total_units


def rates(outcomes: list[simulate.Outcome], action: str) -> str:
    r = float(np.mean([o.action == action for o in outcomes]))
    return f"{r:.4f} ± {math.sqrt(r * (1 - r) / len(outcomes)):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--long", type=int, default=60, help="runs of 2,000 looks")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng, b = np.random.default_rng(args.seed), args.experiments
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    balanced = simulate.settings_for(expected_units=10_000, burn_in_s=0.0, ramp_rest=simulate.REST)
    print(f"seed {args.seed}, B = {b}")
    started = time.perf_counter()
    for label, world, looks, per_look, runs in (
        ("A/A fresh, 20 looks", simulate.World(), 20, 3_000, b),
        ("A/A returning, 20 looks", simulate.World(returning=True), 20, 1_500, b),
        ("A/A fresh, 2,000 looks", simulate.World(), 2_000, 60, args.long),
    ):
        out = [simulate.run(rng, world=world, settings=balanced, looks=looks, per_look=per_look) for _ in range(runs)]
        print(f"{label:<26} B={runs}: promoted {rates(out, 'promote')}, rolled back {rates(out, 'rollback')}")
    for label, rest in (("power, balanced", simulate.REST), ("power, unbalanced", None)):
        total = plan_total(balanced=rest is not None)
        settings = simulate.settings_for(expected_units=plan.units_per_arm, ramp_rest=rest)
        world = simulate.World(effect=simulate.constant(0.10))
        out = [
            simulate.run(rng, world=world, settings=settings, looks=40, per_look=math.ceil(total / 40))
            for _ in range(b)
        ]
        print(f"{label:<26} plan total {total:,} users: promoted {rates(out, 'promote')}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
