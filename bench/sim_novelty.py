"""Novelty effects through the real analyzer: how often a faded effect is promoted (issue 18, finding 1).

    PYTHONPATH=$PWD .venv/bin/python bench/sim_novelty.py [--experiments 600] [--seed 4] [--burn-in 0,1,5,7]

Closed loops (`abrouter.analysis.simulate.run`): binary metric at 5%, the default ramp
(5% -> 25% -> 50%), 20 looks over the default max_duration (14 days: 0.7 days per look),
`expected_units_per_arm` 10,000 and 3,000 new users per look (the review's world), unless
a row says otherwise. The candidate converts (1 + lift) times as often during the first
`until` looks, then like the control. Each row is run with each `--burn-in` (days; 0: no
burn-in, only the novelty check of `stats.stability` holds a promotion; 7, the default
since issue 18's third pass; 1, the default before). A burn-in longer than the novelty
makes the ramp's step into the final one wait for it, so the novelty stays in the canary
epochs, which the decision design does not count.

The power row spreads `abrouter plan`'s total users for that burn-in (`stats.power.rollout`,
baseline 5%, +10% relative: the ramp's or the burn-in's users, whichever is more, plus the
final step's n effective units per arm) evenly over 40 looks in 14 days, as bench/sim_plan.py
does, with a constant +10% effect.
Rates ± one Monte-Carlo SE √(r(1 − r)/B).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np

from abrouter.analysis import simulate
from abrouter.analysis.stats.power import rollout, sample_size

LOOKS = 20
DAYS = 14.0
DAY = 86400.0


def fading(lift: float, until: int) -> simulate.Effect:
    return lambda look, base: base * (1 + lift) if look < until else base


def rate(hits: list[bool]) -> str:
    r = float(np.mean(hits))
    return f"{r:.3f} ± {math.sqrt(r * (1 - r) / len(hits)):.3f}"


def row(
    rng: np.random.Generator,
    *,
    effect: simulate.Effect,
    until: int,
    burn_in: float,
    per_look: int,
    expected: int,
    b: int,
    looks: int = LOOKS,
) -> tuple[str, str]:
    settings = replace(simulate.settings_for(expected_units=expected), burn_in_s=burn_in)
    world = simulate.World(effect=effect)
    runs = [simulate.run(rng, world=world, settings=settings, looks=looks, per_look=per_look) for _ in range(b)]
    promoted = [r.action == "promote" for r in runs]
    after = [r.action == "promote" and r.look >= until for r in runs]
    return rate(promoted), rate(after)


def plan_total(burn_in: float) -> int:
    """`plan`'s total users for the example at the traffic that fits them in 14 days (bench/sim_plan.py)."""
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    settings = simulate.settings_for(expected_units=plan.units_per_arm)
    kw = dict(ramp=settings.ramp, min_units_per_arm=settings.min_units_per_arm)
    fixed = rollout(plan, burn_in_s=0.0, traffic=None, **kw)  # type: ignore[arg-type]
    traffic = (fixed.ramp_units + fixed.final_units) / DAYS
    if traffic * burn_in / DAY > fixed.ramp_units:  # 14·T = max(ramp, T·burn-in days) + final
        traffic = fixed.final_units / (DAYS - burn_in / DAY)
    full = rollout(plan, burn_in_s=burn_in, traffic=traffic, **kw)  # type: ignore[arg-type]
    assert full.total_units is not None
    return full.total_units


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=600)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--burn-in", default="0,1,5,7", help="days, comma-separated")
    args = parser.parse_args()
    rng, b = np.random.default_rng(args.seed), args.experiments
    burn_ins = [float(x) * DAY for x in args.burn_in.split(",")]
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    worlds = [
        ("+30% for 6 of 20 looks", fading(0.3, 6), 6),
        ("+30% for 8 of 20 looks", fading(0.3, 8), 8),
        ("+10% for 3 of 20 looks, ramp as above", fading(0.1, 3), 3),
        ("A/A", simulate.constant(0.0), 0),
    ]
    print(f"seed {args.seed}, B = {b} per row; promoted (all) | promoted at or after the fade")
    started = time.perf_counter()
    for label, effect, until in worlds:
        for burn_in in burn_ins:
            got = row(rng, effect=effect, until=until, burn_in=burn_in, per_look=3_000, expected=10_000, b=b)
            print(f"{label:<42} burn_in {burn_in / DAY:g}d: {got[0]} | {got[1]}", flush=True)
    for burn_in in burn_ins:
        total = plan_total(burn_in)
        per_look = math.ceil(total / 40)
        got = row(
            rng,
            effect=simulate.constant(0.1),
            until=0,
            burn_in=burn_in,
            per_look=per_look,
            expected=plan.units_per_arm,
            b=b,
            looks=40,
        )
        print(
            f"+10% constant, plan's {total:,} users in 40 looks  burn_in {burn_in / DAY:g}d: power {got[0]}", flush=True
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
