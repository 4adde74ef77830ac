"""Coverage of ratio-metric intervals with heavy-tailed exposures per unit (issue 18, finding 5).

    PYTHONPATH=$PWD .venv/bin/python bench/sim_ratio_coverage.py [--runs 2000] [--seed 1]

A/A: each user's exposures n_u = ⌈lognormal(0, 2)⌉ or ⌈Pareto(1.1) + 1⌉, a propensity
p_u ~ Beta(0.5, 9.5) (mean 5%), clicks ~ Binomial(n_u, p_u); clicks per exposure, by the
delta method over units (`compare`). Prints the share of runs whose 95% interval covers 0:
with the normal quantile (the delta method's SE × 1.96, as before issue 18) and as
`compare` reports it now (the t quantile at the smaller arm's Kish effective units of the
denominator − 1; the relative interval on the log scale), for the absolute and the
relative interval (before: symmetric, delta method, z), ± one Monte-Carlo SE.
"""

from __future__ import annotations

import math
import time

import numpy as np
import simcli
from scipy import stats as sps

from abrouter.analysis.stats import estimate, fixed_horizon
from abrouter.analysis.stats.compare import compare
from abrouter.analysis.stats.sample import Sample

Z = 1.959964


def one_arm(rng: np.random.Generator, n: int, tail: str) -> Sample:
    e = np.ceil(rng.lognormal(0, 2, n)) if tail == "lognormal" else np.ceil(rng.pareto(1.1, n) + 1)
    x = rng.binomial(e.astype(np.int64), rng.beta(0.5, 9.5, n)).astype(float)
    return Sample.from_ratio(x, e)


def main() -> None:
    args, rng = simcli.parse(__doc__)
    started = time.perf_counter()
    print(
        f"seed {args.seed}, {args.runs} runs per row; coverage: absolute z | absolute now | relative z | relative now"
    )
    for tail, users in (("lognormal", 500), ("lognormal", 5_000), ("pareto", 500), ("pareto", 5_000)):
        hits = [0, 0, 0, 0]
        for _ in range(args.runs):
            control, candidate = one_arm(rng, users, tail), one_arm(rng, users, tail)
            c = compare(
                control,
                candidate,
                kind="continuous",
                direction="increase",
                alpha=0.05,
                expected_units=users,
                variant="v",
                metric="m",
            )
            half_abs = (c.absolute_ci[1] - c.absolute_ci[0]) / 2
            t_over_z = float(sps.t.isf(0.025, fixed_horizon.ratio_df([(control, candidate)]))) / Z
            est = estimate.combine([control], [candidate], estimate.arm_variance("continuous"))
            hits[0] += abs(c.absolute_lift) <= half_abs / t_over_z
            hits[1] += c.absolute_ci[0] <= 0 <= c.absolute_ci[1]
            hits[2] += abs(est.relative) <= Z * math.sqrt(est.relative_variance)
            hits[3] += c.relative_ci[0] <= 0 <= c.relative_ci[1]
        print(f"{tail:<9} {users:>5} per arm: " + " | ".join(simcli.rate(h, args.runs) for h in hits), flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
