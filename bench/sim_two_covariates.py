"""Two correlated covariates against one: the variance of the adjusted lift, through `compare`.

    PYTHONPATH=$PWD .venv/bin/python bench/sim_two_covariates.py [--runs 2000] [--seed 1]

Per unit c₁, c₂ ~ N(0, 1) with correlation 0.5 (e.g. prior clicks and prior sessions) and
x = c₁ + c₂ + e, e ~ N(0, 1), so Var x = 4; the candidate adds +0.1. Each run draws 500
units per arm and compares them as `abrouter analyze` does from Redis: CUPED on c₁ alone
(`Sample.cov_sum`, ...: the one-covariate path) and the regression on c₁ and c₂
(`Sample.covariates`, `MultiSums`: what the reader builds from the router's pairs).
Theory: the residual variance is Var(c₂ | c₁) + 1 = 1.75 with c₁, 1 with both, so the
lift's variance with two is 1/1.75 = 0.571 of one's, and 1.75/4 = 0.44 of the raw's.
Printed: the empirical variance of each estimate over the runs, their ratio with a
bootstrap SE over runs, the mean reported variance reduction, and 95% coverage ± its
Monte-Carlo SE.
"""

from __future__ import annotations

import time

import numpy as np
import simcli

from abrouter.analysis.stats.compare import compare
from abrouter.analysis.stats.multisums import MultiSums
from abrouter.analysis.stats.sample import Sample

N, LIFT = 500, 0.1
COV = np.array([[1.0, 0.5], [0.5, 1.0]])


def arm(rng: np.random.Generator, lift: float) -> tuple[np.ndarray, np.ndarray]:
    c = rng.multivariate_normal([0.0, 0.0], COV, N)
    return c.sum(axis=1) + rng.normal(0.0, 1.0, N) + lift, c


def lifts(rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(estimate, CI half-width, reported variance reduction) with c₁ alone, then with c₁ and c₂."""
    (xc, cc), (xt, ct) = arm(rng, 0.0), arm(rng, LIFT)
    one = [Sample.from_values(x, c[:, 0]) for x, c in ((xc, cc), (xt, ct))]
    two = [Sample(n=N, sum=float(x.sum()), sum_sq=float(x @ x), covariates=MultiSums.from_units(x, c))
           for x, c in ((xc, cc), (xt, ct))]  # fmt: skip
    out = []
    for control, candidate in (one, two):
        r = compare(control, candidate, kind="continuous", direction="increase", alpha=0.05,
                    expected_units=2 * N, variant="t", metric="x")  # fmt: skip
        out.append((r.absolute_lift, (r.absolute_ci[1] - r.absolute_ci[0]) / 2, r.variance_reduction))
    return out


def main() -> None:
    args, rng = simcli.parse(__doc__)
    started = time.perf_counter()
    runs = np.array([lifts(rng) for _ in range(args.runs)])  # run, (c1 alone; c1 and c2), field
    est, half, red = runs[:, :, 0], runs[:, :, 1], runs[:, :, 2]
    var_one, var_two = est[:, 0].var(ddof=1), est[:, 1].var(ddof=1)
    boot = np.random.default_rng(args.seed + 1)
    ratios = []
    for _ in range(500):
        pick = boot.integers(0, args.runs, args.runs)
        ratios.append(est[pick, 1].var(ddof=1) / est[pick, 0].var(ddof=1))
    print(f"seed {args.seed}, {args.runs} runs, {N} units per arm, lift +{LIFT}")
    print(f"Var(lift), c1 alone: {var_one:.6f}; c1 and c2: {var_two:.6f}; raw theory {2 * 4 / N:.6f}")
    print(f"ratio two/one {var_two / var_one:.3f} ± {np.std(ratios):.3f} (theory {1 / 1.75:.3f})")
    print(f"mean variance reduction reported: c1 {red[:, 0].mean():.3f}, c1+c2 {red[:, 1].mean():.3f} "
          f"(theory {1 - 1.75 / 4:.3f}, {1 - 1 / 4:.3f})")  # fmt: skip
    for k, name in ((0, "c1 alone"), (1, "c1 and c2")):
        hits = int(np.sum(np.abs(est[:, k] - LIFT) <= half[:, k]))
        print(f"95% coverage, {name}: {simcli.rate(hits, args.runs)}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
