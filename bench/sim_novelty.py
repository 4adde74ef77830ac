"""Novelty effects through the real analyzer: how often a faded effect is promoted (issue 18, finding 1).

    PYTHONPATH=$PWD .venv/bin/python bench/sim_novelty.py [--experiments 600] [--seed 4]

Closed loops (`abrouter.analysis.simulate.run`): binary metric at 5%, the default ramp
(5% -> 25% -> 50%), 20 looks over the default max_duration (14 days: 0.7 days per look),
`expected_units_per_arm` 10,000 and 3,000 new users per look (the review's world), unless
a row says otherwise. The candidate converts (1 + lift) times as often during the first
`until` looks, then like the control. Each row is run with `burn_in` 0 (no burn-in: only the
novelty check of `stats.stability` holds a promotion), with the default (1 day) and with 5
days (longer than the first two worlds' novelty: the ramp's step into the final one waits
for it, so the novelty stays in the canary epochs).
Rates ± one Monte-Carlo SE √(r(1 − r)/B).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np

from abrouter.analysis import simulate
from abrouter.analysis.stats.power import sample_size

LOOKS = 20


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
) -> tuple[str, str]:
    settings = replace(simulate.settings_for(expected_units=expected), burn_in_s=burn_in)
    world = simulate.World(effect=effect)
    runs = [simulate.run(rng, world=world, settings=settings, looks=LOOKS, per_look=per_look) for _ in range(b)]
    promoted = [r.action == "promote" for r in runs]
    after = [r.action == "promote" and r.look >= until for r in runs]
    return rate(promoted), rate(after)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=600)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    rng, b = np.random.default_rng(args.seed), args.experiments
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    worlds = [
        ("+30% for 6 of 20 looks", fading(0.3, 6), 6, 3_000, 10_000),
        ("+30% for 8 of 20 looks", fading(0.3, 8), 8, 3_000, 10_000),
        ("+10% for 3 of 20 looks, ramp as above", fading(0.1, 3), 3, 3_000, 10_000),
        ("A/A", simulate.constant(0.0), 0, 3_000, 10_000),
        (
            "+10% constant, plan's users in 20 looks",
            simulate.constant(0.1),
            0,
            math.ceil(2 * plan.units_per_arm / LOOKS),
            plan.units_per_arm,
        ),
    ]
    print(f"seed {args.seed}, B = {b} per row; promoted (all) | promoted at or after the fade")
    started = time.perf_counter()
    for label, effect, until, per_look, expected in worlds:
        for burn_in in (0.0, 86400.0, 5 * 86400.0):
            got = row(rng, effect=effect, until=until, burn_in=burn_in, per_look=per_look, expected=expected, b=b)
            print(f"{label:<42} burn_in {burn_in / 86400:g}d: {got[0]} | {got[1]}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
