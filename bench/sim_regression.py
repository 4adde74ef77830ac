"""Regression adjustment with k = 3 covariates (`stats.regression`): interval coverage, Welch vs OLS.

    PYTHONPATH=$PWD .venv/bin/python bench/sim_regression.py [--runs 4000] [--seed 4]

Units as in tests/analysis/stats/test_stats_regression.py: three correlated Gamma
covariates drive x, with noise that grows with the first; the candidate (+0.3) has an
extra N(0, 1) of noise, so the arms' residual variances differ. For each split, the share
of 95% Wald intervals that cover +0.3, on Welch's variance of the adjusted values (what
`compare` uses) and on the OLS variance (statsmodels' non-robust SE, one residual
variance), ± one Monte-Carlo SE; and the variance reduction against the raw Welch variance.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from abrouter.analysis.stats import regression
from abrouter.analysis.stats.multisums import MultiSums

Z = 1.959964


def units(rng: np.random.Generator, n: int, *, lift: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    c = rng.gamma(2.0, 1.5, (n, 3)) + 0.5 * rng.normal(size=(n, 1))
    x = 2.0 + c @ np.array([1.0, 0.6, 0.2]) + lift + rng.normal(0.0, 1.0 + 0.3 * c[:, 0], n)
    return x + rng.normal(0.0, noise, n), c


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    rng, started = np.random.default_rng(args.seed), time.perf_counter()
    print(f"seed {args.seed}, {args.runs} runs, lift +0.3, k = 3")
    for n_c, n_t in ((300, 300), (200, 800), (800, 200)):
        welch = ols = 0
        reduction = []
        for _ in range(args.runs):
            (xc, cc), (xt, ct) = units(rng, n_c, lift=0.0, noise=0.0), units(rng, n_t, lift=0.3, noise=1.0)
            a = regression.adjust(MultiSums.from_units(xc, cc), MultiSums.from_units(xt, ct))
            assert a is not None
            welch += abs(a.difference - 0.3) <= Z * math.sqrt(a.variance)
            ols += abs(a.difference - 0.3) <= Z * math.sqrt(a.ols_variance)
            reduction.append(1 - a.variance / (xc.var(ddof=1) / n_c + xt.var(ddof=1) / n_t))
        se = math.sqrt(0.95 * 0.05 / args.runs)
        print(
            f"control {n_c:>4}, candidate {n_t:>4}: coverage Welch {welch / args.runs:.4f}, "
            f"OLS {ols / args.runs:.4f} (± {se:.4f}); variance reduction {np.mean(reduction):.2f}",
            flush=True,
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
