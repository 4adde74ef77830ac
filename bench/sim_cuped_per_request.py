"""CUPED for a ratio per exposure and of a built-in: coverage, variance reduction, power (issue 18).

    PYTHONPATH=$PWD .venv/bin/python bench/sim_cuped_per_request.py [--runs 2000] [--seed 1]

The denominator is the unit's requests n_u (``denominator: exposures``), the analysis
`compare()` as the analyzer runs it on what the reader builds from Redis (the covariate
column's ``sum_xn`` is Σn_u·c_u; tests/router/eventlog/test_cuped_cap.py checks the sums).
Two numerators, the generators of tests/analysis/stats/test_stats_cuped_per_request.py:

- clicks per request: activity λ_u ~ lognormal(0, σ), requests n_u ~ Poisson(3λ_u) + 1,
  propensity p_u ~ Beta(0.5, 9.5), clicks ~ Binomial(n_u, p_u·(1 + lift)); the covariate is
  the clicks of a four times longer pre-period, Binomial(Poisson(12λ_u) + 1, p_u);
- latency per request (the built-in latency_ms): a payload scale s_u ~ lognormal(0, 0.5), the
  unit's summed latency ~ Gamma(4·n_u, 10·s_u·(1 + lift)) ms, the covariate its mean latency
  over 5 pre-period requests, Gamma(20, 10·s_u)/5.

Per row, A/A: the share of runs whose 95% interval covers 0, adjusted (as reported: t at
Kish's effective units of the requests − 1) and unadjusted; the variance reduction, the mean
of the reported 1 − V_adj/V beside the true 1 − var(adjusted lift)/var(unadjusted lift)
across runs; then fixed-horizon power at +10%, α = 0.05. ± one Monte-Carlo SE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import simcli

from abrouter.analysis.stats.compare import Comparison, compare
from abrouter.analysis.stats.sample import Sample

Units = tuple[np.ndarray, np.ndarray, np.ndarray]
Generator = Callable[[np.random.Generator, int, float, float], Units]


def clicks(rng: np.random.Generator, n: int, sigma: float, lift: float) -> Units:
    activity, p = rng.lognormal(0, sigma, n), rng.beta(0.5, 9.5, n)
    requests = rng.poisson(3 * activity) + 1
    x = rng.binomial(requests, np.minimum(p * (1 + lift), 1.0))
    return x.astype(float), requests.astype(float), rng.binomial(rng.poisson(12 * activity) + 1, p).astype(float)


def latency(rng: np.random.Generator, n: int, sigma: float, lift: float) -> Units:
    activity, scale = rng.lognormal(0, sigma, n), rng.lognormal(0, 0.5, n)
    requests = rng.poisson(3 * activity) + 1
    return rng.gamma(4 * requests, 10 * scale * (1 + lift)), requests.astype(float), rng.gamma(20, 10 * scale) / 5


CASES: tuple[tuple[str, Generator, float, int], ...] = (
    ("clicks per request, lognormal(0, 0.8)", clicks, 0.8, 1_000),
    ("clicks per request, lognormal(0, 0.8)", clicks, 0.8, 10_000),
    ("clicks per request, lognormal(0, 2)", clicks, 2.0, 500),
    ("clicks per request, lognormal(0, 2)", clicks, 2.0, 5_000),
    ("latency per request, lognormal(0, 0.8)", latency, 0.8, 1_000),
)


def both(rng: np.random.Generator, case: tuple[str, Generator, float, int], lift: float) -> tuple[Comparison, ...]:
    _, generate, sigma, n = case
    control, candidate = generate(rng, n, sigma, 0.0), generate(rng, n, sigma, lift)
    kw = dict(kind="continuous", direction="increase", alpha=0.05, expected_units=n, variant="v", metric="ratio")
    adjusted = compare(Sample.from_ratio(*control), Sample.from_ratio(*candidate), **kw)  # type: ignore[arg-type]
    plain = compare(Sample.from_ratio(*control[:2]), Sample.from_ratio(*candidate[:2]), **kw)  # type: ignore[arg-type]
    return adjusted, plain


def aa_row(rng: np.random.Generator, runs: int, case: tuple[str, Generator, float, int]) -> str:
    hits, reported, lifts = [0, 0], [], []
    for _ in range(runs):
        adj, plain = both(rng, case, 0.0)
        hits[0] += adj.absolute_ci[0] <= 0 <= adj.absolute_ci[1]
        hits[1] += plain.absolute_ci[0] <= 0 <= plain.absolute_ci[1]
        reported.append(adj.variance_reduction)
        lifts.append((adj.absolute_lift, plain.absolute_lift))
    a = np.array(lifts)
    ratio = float(np.var(a[:, 0]) / np.var(a[:, 1]))
    return (
        f"coverage adjusted {simcli.rate(hits[0], runs)}, unadjusted {simcli.rate(hits[1], runs)} | reduction reported"
        f" {np.mean(reported):.3f}, true {1 - ratio:.3f} (± {ratio * math.sqrt(2 / runs):.3f})"
    )


def power_row(rng: np.random.Generator, runs: int, case: tuple[str, Generator, float, int]) -> str:
    hits = [0, 0]
    for _ in range(runs):
        adj, plain = both(rng, case, 0.10)
        hits[0] += plain.p_value < 0.05
        hits[1] += adj.p_value < 0.05
    return f"power at +10%: unadjusted {simcli.rate(hits[0], runs)}, adjusted {simcli.rate(hits[1], runs)}"


def main() -> None:
    args, rng = simcli.parse(__doc__)
    started = time.perf_counter()
    print(f"seed {args.seed}, {args.runs} runs per row; A/A coverage of the 95% CI and the variance reduction")
    for case in CASES:
        print(f"{case[0]:<40} {case[3]:>6} per arm: {aa_row(rng, args.runs, case)}", flush=True)
    for case in (("clicks per request, lognormal(0, 0.8)", clicks, 0.8, 5_000), CASES[-1]):
        print(f"{case[0]:<40} {case[3]:>6} per arm: {power_row(rng, args.runs, case)}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
