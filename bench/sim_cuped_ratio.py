"""CUPED for ratio metrics: coverage, variance reduction and power by simulation (issue 18).

    PYTHONPATH=$PWD .venv/bin/python bench/sim_cuped_ratio.py [--runs 2000] [--seed 1]

Users of both arms draw an activity λ_u ~ lognormal(0, σ) and a propensity p_u ~
Beta(0.5, 9.5) (mean 5%): impressions y_u ~ Poisson(5λ_u) + 1, clicks x_u ~ Binomial(y_u,
p_u·(1 + lift)), and the covariate c_u, the clicks of a four times longer pre-period,
~ Binomial(Poisson(20λ_u) + 1, p_u). The metric is ctr = Σx/Σy, adjusted by c through its
linearisation (`abrouter.analysis.stats.cuped`), through `compare()` as the analyzer runs it.

Per row, A/A (lift 0): the share of runs whose 95% interval covers 0, adjusted as `compare`
reports it (t at Kish's effective units of the denominators − 1), adjusted with the normal
quantile instead, unadjusted (`compare` without the covariate), and the adjusted relative
interval (log scale); the variance reduction `compare` reports (the mean of 1 − V_adj/V,
and 1 − mean V_adj / mean V), the true one, 1 − var(adjusted lift)/var(unadjusted lift)
across runs, and each estimate's calibration var(lift)/mean(V) across runs. Then power at +10% (fixed horizon,
α = 0.05, two-sided), unadjusted and adjusted. ± one Monte-Carlo SE.
"""

from __future__ import annotations

import math
import time

import numpy as np
import simcli
from scipy import stats as sps

from abrouter.analysis.stats import fixed_horizon
from abrouter.analysis.stats.compare import Comparison, compare
from abrouter.analysis.stats.sample import Sample

Z = 1.959964
CASES = (("lognormal(0, 0.8)", 0.8, 1_000), ("lognormal(0, 0.8)", 0.8, 10_000), ("lognormal(0, 2)", 2.0, 500),
         ("lognormal(0, 2)", 2.0, 5_000))  # fmt: skip


def arm(rng: np.random.Generator, n: int, sigma: float, lift: float = 0.0) -> tuple[Sample, Sample]:
    """(adjustable, plain) Samples of one arm's ctr."""
    activity, p = rng.lognormal(0, sigma, n), rng.beta(0.5, 9.5, n)
    y = rng.poisson(5 * activity) + 1
    x = rng.binomial(y, np.minimum(p * (1 + lift), 1.0))
    c = rng.binomial(rng.poisson(20 * activity) + 1, p)
    return Sample.from_ratio(x, y, c), Sample.from_ratio(x, y)


def both(rng: np.random.Generator, n: int, sigma: float, lift: float) -> tuple[Comparison, Comparison, float]:
    """The adjusted and the unadjusted comparison, and the t quantile's ratio to z."""
    (ca, cp), (ta, tp) = arm(rng, n, sigma), arm(rng, n, sigma, lift)
    kw = dict(kind="continuous", direction="increase", alpha=0.05, expected_units=n, variant="v", metric="ctr")
    t_over_z = float(sps.t.isf(0.025, fixed_horizon.ratio_df([(cp, tp)]))) / Z
    return compare(ca, ta, **kw), compare(cp, tp, **kw), t_over_z  # type: ignore[arg-type]


def aa_row(rng: np.random.Generator, runs: int, sigma: float, n: int) -> str:
    hits, reported, lifts, variances = [0, 0, 0, 0], [], [], []
    for _ in range(runs):
        adj, plain, t_over_z = both(rng, n, sigma, 0.0)
        half = (adj.absolute_ci[1] - adj.absolute_ci[0]) / 2
        hits[0] += adj.absolute_ci[0] <= 0 <= adj.absolute_ci[1]
        hits[1] += abs(adj.absolute_lift) <= half / t_over_z
        hits[2] += plain.absolute_ci[0] <= 0 <= plain.absolute_ci[1]
        hits[3] += adj.relative_ci[0] <= 0 <= adj.relative_ci[1]
        reported.append(adj.variance_reduction)
        lifts.append((adj.absolute_lift, plain.absolute_lift))
        variances.append((_variance(adj, t_over_z), _variance(plain, t_over_z)))
    a, v = np.array(lifts), np.array(variances)
    ratio = float(np.var(a[:, 0]) / np.var(a[:, 1]))
    true = f"{1 - ratio:.3f} (± {ratio * math.sqrt(2 / runs):.3f} if normal)"
    cover = " | ".join(simcli.rate(h, runs) for h in hits)
    pooled = 1 - v[:, 0].mean() / v[:, 1].mean()
    calibration = np.var(a, axis=0) / v.mean(axis=0)
    return (
        f"{cover} | reduction: reported {np.mean(reported):.3f} (of the mean V's {pooled:.3f}), true {true}"
        f" | var(lift)/mean(V): adjusted {calibration[0]:.2f}, unadjusted {calibration[1]:.2f}"
    )


def _variance(c: Comparison, t_over_z: float) -> float:
    """The variance behind the comparison's fixed-horizon CI (t quantile at Kish's df)."""
    return ((c.absolute_ci[1] - c.absolute_ci[0]) / 2 / (Z * t_over_z)) ** 2


def power_row(rng: np.random.Generator, runs: int, sigma: float, n: int) -> str:
    hits = [0, 0]
    for _ in range(runs):
        adj, plain, _ = both(rng, n, sigma, 0.10)
        hits[0] += plain.p_value < 0.05
        hits[1] += adj.p_value < 0.05
    return f"unadjusted {simcli.rate(hits[0], runs)}, adjusted {simcli.rate(hits[1], runs)}"


def main() -> None:
    args, rng = simcli.parse(__doc__)
    started = time.perf_counter()
    print(f"seed {args.seed}, {args.runs} runs per row")
    print("A/A coverage of the 95% CI: adjusted (t, as reported) | adjusted (z) | unadjusted | adjusted relative")
    for label, sigma, n in CASES:
        print(f"activity {label:<17} {n:>6} per arm: {aa_row(rng, args.runs, sigma, n)}", flush=True)
    print("power at +10% (fixed horizon)")
    for label, sigma, n in (("lognormal(0, 0.8)", 0.8, 5_000), ("lognormal(0, 2)", 2.0, 5_000)):
        print(f"activity {label:<17} {n:>6} per arm: {power_row(rng, args.runs, sigma, n)}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
