"""Power at `abrouter plan`'s total users with the default ramp and burn-in (issue 18, finding 2).

    PYTHONPATH=$PWD .venv/bin/python bench/sim_plan.py [--experiments 400] [--looks 40] [--seed 1]

`abrouter plan --baseline 0.05 --mde 0.1 --relative` gives n per arm; `stats.power.rollout`
adds the default ramp's users (5% and 25% steps until 500 units per arm; the step into the
final one also waits for the day's burn-in). The closed loop (`simulate.run`, +10% constant effect,
`expected_units_per_arm` = n) spreads the plan's total users evenly over `--looks` looks
across the default max_duration (14 days), so the traffic T per day solves
14·T = max(ramp, T·burn-in days) + final. Prints the share promoted by then (± one MC SE),
and the same for 50/50 (no ramp, still a burn-in) and with CUPED (ρ = 0.5).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from abrouter.analysis import simulate
from abrouter.analysis.stats.power import rollout, sample_size

DAYS = 14.0


def traffic_for(ramp: bool) -> tuple[float, int]:
    """Users per day such that 14 days hold the plan's total users, and that total."""
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    settings = simulate.settings_for(expected_units=plan.units_per_arm, ramp=ramp)
    kw = dict(ramp=settings.ramp, min_units_per_arm=settings.min_units_per_arm, burn_in_s=settings.burn_in_s)
    fixed = rollout(plan, traffic=None, **kw | {"burn_in_s": 0.0})  # type: ignore[arg-type]
    burn_days = settings.burn_in_s / 86400 if ramp else 0.0
    # 14·T = max(ramp users, T·burn-in days) + final users
    traffic = (fixed.ramp_units + fixed.final_units) / DAYS
    if traffic * burn_days > fixed.ramp_units:
        traffic = fixed.final_units / (DAYS - burn_days)
    full = rollout(plan, traffic=traffic, **kw)  # type: ignore[arg-type]
    assert full.total_units is not None
    return traffic, full.total_units


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=400)
    parser.add_argument("--looks", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    print(f"plan: {plan.units_per_arm:,} per arm; seed {args.seed}, B = {args.experiments}, {args.looks} looks")
    started = time.perf_counter()
    for label, ramp, cuped in (
        ("default ramp", True, False),
        ("default ramp, CUPED", True, True),
        ("50/50", False, False),
    ):
        traffic, total = traffic_for(ramp)
        settings = simulate.settings_for(expected_units=plan.units_per_arm, ramp=ramp)
        world = simulate.World(effect=simulate.constant(0.10), covariate=cuped)
        per_look = math.ceil(total / args.looks)
        runs = [
            simulate.run(rng, world=world, settings=settings, looks=args.looks, per_look=per_look)
            for _ in range(args.experiments)
        ]
        r = float(np.mean([o.action == "promote" for o in runs]))
        se = math.sqrt(r * (1 - r) / args.experiments)
        print(f"{label:<22} plan total {total:>7,} users ({traffic:,.0f}/day): power {r:.3f} ± {se:.3f}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
