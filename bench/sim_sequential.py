"""Simulated experiments analysed as data arrives, through the real `compare()` path.

    .venv/bin/python bench/sim_sequential.py [--experiments 2000] [--looks 20] [--seed 1]

1. A/A: both arms convert at 5%. Each experiment is analysed at `looks` evenly spaced
   looks (500 units per arm per look, 10,000 per arm at the end = expected_units). The
   sequential procedure "promotes" when the running-minimum sequential p < alpha with the
   candidate ahead; the naive procedure when the fixed-horizon p < alpha at any look.
2. Power: the candidate converts at 5.5% (+10% relative). Horizons of 1x and 2x the
   fixed-horizon plan of `abrouter plan --baseline 0.05 --mde 0.1 --relative`; the mSPRT
   is tuned to the plan (expected_units = plan.units_per_arm).

Prints a table; the numbers are recorded in docs/statistics.md.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from abrouter.analysis.stats.compare import FRESH, compare
from abrouter.analysis.stats.power import sample_size
from abrouter.analysis.stats.sample import Sample

ALPHA = 0.05
BASE = 0.05


@dataclass(frozen=True)
class Run:
    """Outcome of one simulated experiment over all its looks."""

    sequential_look: int | None  # first look where the sequential p < alpha, if any
    sequential_positive: bool  # the candidate was ahead at that look
    naive_positive: bool  # some look had fixed-horizon p < alpha with the candidate ahead
    naive_any: bool
    final_fixed: bool  # fixed-horizon p < alpha at the last look only
    relative_harm: bool  # the relative sequence excluded 0 from above (A/A "harm")
    relative_benefit: bool


def simulate(
    rng: np.random.Generator, *, rates: tuple[float, float], looks: int, per_look: int, expected_units: int
) -> Run:
    conversions = rng.binomial(per_look, rates, size=(looks, 2)).cumsum(axis=0)
    previous, first, positive = FRESH, None, False
    naive_any = naive_positive = harm = benefit = False
    for look in range(looks):
        n = per_look * (look + 1)
        c = compare(
            Sample(n, float(conversions[look, 0])),
            Sample(n, float(conversions[look, 1])),
            kind="binary",
            direction="increase",
            alpha=ALPHA,
            expected_units=expected_units,
            variant="candidate",
            metric="conversion",
            previous=previous,
        )
        previous = c.running()
        if first is None and c.status == "ok" and c.sequential_p_value < ALPHA:
            first, positive = look, c.sequential_p_better < ALPHA
        significant = c.status == "ok" and c.p_value < ALPHA
        naive_any |= significant
        naive_positive |= significant and c.absolute_lift > 0
        harm |= c.status == "ok" and c.sequential_ci[1] < 0
        benefit |= c.status == "ok" and c.sequential_ci[0] > 0
    return Run(first, positive, naive_positive, naive_any, significant, harm, benefit)


def aa_table(rng: np.random.Generator, experiments: int, looks: int) -> list[tuple[str, str]]:
    runs = [
        simulate(rng, rates=(BASE, BASE), looks=looks, per_look=500, expected_units=500 * looks)
        for _ in range(experiments)
    ]

    def rate(values):
        return f"{np.mean(values):.4f}  (±{2 * math.sqrt(np.mean(values) * (1 - np.mean(values)) / len(values)):.4f})"

    return [
        ("A/A sequential: significant at any look", rate([r.sequential_look is not None for r in runs])),
        ("A/A sequential: false promotion (candidate ahead)", rate([r.sequential_positive for r in runs])),
        ("A/A naive fixed-horizon, any look: significant", rate([r.naive_any for r in runs])),
        ("A/A naive fixed-horizon, any look: false promotion", rate([r.naive_positive for r in runs])),
        ("A/A fixed-horizon, last look only: significant", rate([r.final_fixed for r in runs])),
        ("A/A relative-scale sequence: excludes 0, harm side", rate([r.relative_harm for r in runs])),
        ("A/A relative-scale sequence: excludes 0, benefit side", rate([r.relative_benefit for r in runs])),
    ]


def power_table(rng: np.random.Generator, experiments: int, looks: int) -> list[tuple[str, str]]:
    plan = sample_size(baseline=BASE, mde=0.10, relative=True)
    rows = [("plan (fixed horizon, 80% power): units per arm", f"{plan.units_per_arm:,}")]
    for horizon in (1, 2):
        per_look = math.ceil(horizon * plan.units_per_arm / looks)
        runs = [
            simulate(rng, rates=(BASE, BASE * 1.1), looks=looks, per_look=per_look, expected_units=plan.units_per_arm)
            for _ in range(experiments)
        ]
        wins = [r for r in runs if r.sequential_positive]
        units = [2 * per_look * (r.sequential_look + 1) for r in wins]
        rows += [
            (f"+10%, horizon {horizon}x plan: sequential power", f"{len(wins) / experiments:.3f}"),
            (
                f"+10%, horizon {horizon}x plan: median units to decide (both arms)",
                f"{np.median(units):,.0f}" if units else "-",
            ),
            (
                f"+10%, horizon {horizon}x plan: fixed-horizon power at the last look",
                f"{np.mean([r.final_fixed for r in runs]):.3f}",
            ),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=2000)
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    rows = aa_table(rng, args.experiments, args.looks) + power_table(rng, args.experiments, args.looks)
    width = max(len(name) for name, _ in rows)
    print(f"{args.experiments} experiments x {args.looks} looks, alpha = {ALPHA}, seed = {args.seed}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"({time.perf_counter() - started:.0f} s, {3 * args.experiments * args.looks:,} compare() calls)")


if __name__ == "__main__":
    main()
