"""Error rates and power of the analyzer's decisions, by closed-loop simulation.

    .venv/bin/python bench/sim_sequential.py [--scale 1.0] [--seed 1]
        [--only aa|long|vectorised|power|ramp-final] [--modes ramp,bandit]

Every closed-loop experiment runs `abrouter.analysis.simulate.run`: at each look the real
`analyzer.analyze` (compare, SRM, `decision.decide`) decides and its decision is applied
(ramp and bandit weights open epochs; promote, rollback and stop end the run). Settings
are the defaults (alpha 0.05, min_units_per_arm 500, ramp 5/25/50, bandit floor 5%)
without guardrails (the simulated data carries no built-in metrics). Rates are printed
with ± one Monte-Carlo standard error, √(r(1 − r)/B) for B experiments (medians: a
bootstrap standard error).

1. A/A with returning users (Gamma(0.5, 2) propensity, Poisson clicks per visit, the
   metric is the user's total, credited to the first exposure), 12,000 new users per
   arm over the run (`expected_units_per_arm` = 10,000), with the default ramp and in
   bandit mode, over 20 and 2,000 looks. A user seen before comes back at each look with
   probability 6/looks (about six returns over the run for the first users). False
   promotion and false rollback are the share of experiments that end so.
2. A/A vectorised: the design's p (`horizon.p_value`) at every look of 50/50 binary
   experiments, without the policy's gates, so an upper bound of the false promotion rate
   with many more experiments than the closed loop affords (a look costs ~2-3 ms there).
3. Power: +10% relative on a 5% base, `expected_units_per_arm` = the plan's 31,231
   (`abrouter plan --baseline 0.05 --mde 0.1 --relative`), 20 looks up to 1x and 2x the
   plan's units per arm, without a ramp (50/50) and with the default ramp, and with
   CUPED on a pre-exposure covariate of correlation 0.5 (`simulate.cuped_samples` hands
   its sums to the analyzer, which adjusts by `abrouter.analysis.stats.cuped`). Median
   units (both arms) at the promoting look.
   `ramp-final`: the default ramp with 25 looks of the same size, so that the final step
   (which alone carries a promotion's evidence) holds the plan's units per arm.

The SRM false-flag rate over 20,160 looks is bench/sim_srm.py's. Prints a table; the
numbers are recorded in bench/README.md and docs/statistics.md.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np

from abrouter.analysis import simulate
from abrouter.analysis.stats import estimate, horizon
from abrouter.analysis.stats.power import sample_size

ALPHA = 0.05
Row = tuple[str, str]


def rate(hits: list[bool] | np.ndarray) -> str:
    r, b = float(np.mean(hits)), len(hits)
    return f"{r:.4f} ± {math.sqrt(r * (1 - r) / b):.4f}  (B = {b:,})"


def median(values: list[int], rng: np.random.Generator) -> str:
    if not values:
        return "-"
    x = np.asarray(values, dtype=float)
    boot = np.median(rng.choice(x, size=(200, x.size)), axis=1)
    return f"{np.median(x):,.0f} ± {np.std(boot):,.0f}"


def closed_loop(
    rng: np.random.Generator, *, world: simulate.World, settings, looks: int, per_look: int, experiments: int
) -> list[simulate.Outcome]:
    return [
        simulate.run(rng, world=world, settings=settings, looks=looks, per_look=per_look) for _ in range(experiments)
    ]


def aa_rows(
    rng: np.random.Generator, scale: float, looks_and_sizes: list[tuple[int, int, int]], modes: tuple[str, ...]
) -> list[Row]:
    rows = []
    for looks, ramp_b, bandit_b in looks_and_sizes:
        world = simulate.World(returning=True, return_rate=6 / looks)
        for mode, experiments in (("default ramp", ramp_b), ("bandit", bandit_b)):
            if mode.split()[-1] not in modes:
                continue
            settings = simulate.settings_for(expected_units=10_000, bandit=mode == "bandit")
            started = time.perf_counter()
            runs = closed_loop(
                rng,
                world=world,
                settings=settings,
                looks=looks,
                per_look=24_000 // looks,
                experiments=max(2, round(scale * experiments)),
            )
            took = time.perf_counter() - started
            label = f"A/A returning users, {mode}, {looks:,} looks"
            rows.append((f"{label}: false promotion", rate([r.action == "promote" for r in runs])))
            rows.append(
                (f"{label}: false rollback", rate([r.action == "rollback" for r in runs]) + f"  [{took:.0f} s]")
            )
    return rows


def vectorised_rows(rng: np.random.Generator, scale: float) -> list[Row]:
    rows = []
    for looks, experiments in ((20, 20_000), (2_000, 2_000)):
        b = max(2, round(scale * experiments))
        crossed = np.zeros(b, dtype=bool)
        for chunk in np.array_split(np.arange(b), max(1, b * looks // 2_000_000)):
            per_look = 12_000 // looks
            conversions = rng.binomial(per_look, ALPHA, size=(chunk.size, looks, 2)).cumsum(axis=1).astype(float)
            n = per_look * np.arange(1.0, looks + 1)[None, :, None]
            p, plus_one = conversions / n, (conversions + 1) / (n + 2)
            variance = np.maximum(p * (1 - p) / n, plus_one * (1 - plus_one) / (n + 2)).sum(axis=-1)
            z = (p[..., 1] - p[..., 0]) / np.sqrt(variance)
            information = estimate.effective_units(n[..., 0], n[..., 0]) / 10_000
            crossed[chunk] = (horizon.p_value(z, information, ALPHA) < ALPHA).any(axis=1)
        rows.append((f"A/A vectorised 50/50, {looks:,} looks: design crosses (promotion bound)", rate(crossed)))
    return rows


def power_rows(rng: np.random.Generator, scale: float, experiments: int) -> list[Row]:
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    rows: list[Row] = [("plan (fixed horizon, 80% power): units per arm", f"{plan.units_per_arm:,}")]
    configs: list[tuple[str, bool, bool]] = [("50/50", False, False), ("50/50, CUPED", False, True)]
    configs += [("default ramp", True, False), ("default ramp, CUPED", True, True)]
    for horizon_x in (1, 2):
        for label, ramp, cuped in configs:
            world = simulate.World(effect=simulate.constant(0.10), covariate=cuped)
            settings = simulate.settings_for(expected_units=plan.units_per_arm, ramp=ramp)
            runs = closed_loop(
                rng,
                world=world,
                settings=settings,
                looks=20,
                per_look=math.ceil(2 * horizon_x * plan.units_per_arm / 20),
                experiments=max(2, round(scale * experiments)),
            )
            name = f"+10%, {horizon_x}x plan, {label}"
            rows.append((f"{name}: power (promoted)", rate([r.action == "promote" for r in runs])))
            rows.append(
                (f"{name}: median units to promote", median([r.units for r in runs if r.action == "promote"], rng))
            )
    return rows


def ramp_final_rows(rng: np.random.Generator, scale: float, experiments: int) -> list[Row]:
    """The default ramp with the plan's units at the final step: 5 more looks of the same size."""
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    rows: list[Row] = []
    for label, cuped in (("", False), (", CUPED", True)):
        runs = closed_loop(
            rng,
            world=simulate.World(effect=simulate.constant(0.10), covariate=cuped),
            settings=simulate.settings_for(expected_units=plan.units_per_arm),
            looks=25,  # the ramp's 5% and 25% steps take the first 5 looks
            per_look=math.ceil(2 * plan.units_per_arm / 20),
            experiments=max(2, round(scale * experiments)),
        )
        name = f"+10%, default ramp, plan's units at the final step{label}"
        rows.append((f"{name}: power", rate([r.action == "promote" for r in runs])))
        rows.append((f"{name}: median units", median([r.units for r in runs if r.action == "promote"], rng)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every number of experiments")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=("aa", "long", "vectorised", "power", "ramp-final"), default=None)
    parser.add_argument("--modes", default="ramp,bandit", help="A/A parts: ramp, bandit or both")
    args = parser.parse_args()
    modes = tuple(args.modes.split(","))
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    parts: dict[str, Callable[[], list[Row]]] = {
        "aa": lambda: aa_rows(rng, args.scale, [(20, 600, 200)], modes),
        "long": lambda: aa_rows(rng, args.scale, [(2_000, 30, 10)], modes),
        "vectorised": lambda: vectorised_rows(rng, args.scale),
        "power": lambda: power_rows(rng, args.scale, 200),
        "ramp-final": lambda: ramp_final_rows(rng, args.scale, 200),
    }
    print(f"alpha = {ALPHA}, seed = {args.seed}, scale = {args.scale}")
    for name, part in parts.items():
        if args.only not in (None, name):
            continue
        rows = part()
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            print(f"{label:<{width}}  {value}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
