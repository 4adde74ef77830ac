"""Coverage of the p95 difference's intervals from latency histograms (issue 18: a quantile test).

    PYTHONPATH=$PWD .venv/bin/python bench/sim_latency_quantile.py [--runs 400] [--seed 1]

Each run draws the control's and the candidate's request latencies from a known world,
bins them as the router does (`keys.latency_bucket`: log buckets 26% wide), and checks
whether the 95% interval of `stats.quantile.difference` holds the true difference of the
p95s. Three intervals: the normal one on the interpolated histogram alone (no gap), the
reported `ci_ms` (widened by both arms' interpolation gaps), and `bounds_ms` (any
distribution). Prints coverage ± one Monte-Carlo SE and the mean half-width in ms.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import simcli
from scipy import stats as sps

from abrouter.analysis.stats import quantile
from abrouter.contract import keys

Q = 0.95
EDGES = np.array(keys.LATENCY_EDGES_MS)
Draw = Callable[[np.random.Generator, int], np.ndarray]


def binned(x: np.ndarray) -> tuple[int, ...]:
    counts = np.bincount(np.searchsorted(EDGES, np.clip(x, 0.001, None), side="right"), minlength=keys.LATENCY_BUCKETS)
    return tuple(int(c) for c in counts)


def lognormal(sigma: float, scale: float) -> Draw:
    return lambda rng, n: scale * rng.lognormal(math.log(20), sigma, n)


def worlds() -> dict[str, tuple[Draw, Draw, float]]:
    def ln_true(sigma: float, scale: float) -> float:
        return (scale - 1) * float(sps.lognorm(sigma, scale=20).ppf(Q))

    return {
        "lognormal(20 ms, 0.6), A/A": (lognormal(0.6, 1.0), lognormal(0.6, 1.0), 0.0),
        "lognormal(20 ms, 0.6), x1.1": (lognormal(0.6, 1.0), lognormal(0.6, 1.1), ln_true(0.6, 1.1)),
        "lognormal(20 ms, 0.3), x1.1": (lognormal(0.3, 1.0), lognormal(0.3, 1.1), ln_true(0.3, 1.1)),
        "lognormal(20 ms, 1.2), x1.1": (lognormal(1.2, 1.0), lognormal(1.2, 1.1), ln_true(1.2, 1.1)),
        "2 ms + exp(5 ms) vs exp(6 ms)": (
            lambda rng, n: 2 + rng.exponential(5, n),
            lambda rng, n: 2 + rng.exponential(6, n),
            math.log(20),
        ),
        "normal(50, 3) vs normal(52, 3)": (
            lambda rng, n: rng.normal(50, 3, n),
            lambda rng, n: rng.normal(52, 3, n),
            2.0,
        ),
        "85% N(8, 1) + tail N(900, 80) vs N(950, 80)": (
            lambda rng, n: np.where(rng.random(n) < 0.85, rng.normal(8, 1, n), rng.normal(900, 80, n)),
            lambda rng, n: np.where(rng.random(n) < 0.85, rng.normal(8, 1, n), rng.normal(950, 80, n)),
            50.0,
        ),
    }


def run(world: tuple[Draw, Draw, float], n: int, runs: int, rng: np.random.Generator) -> str:
    control, candidate, true = world
    hits = [0, 0, 0]
    widths = [0.0, 0.0, 0.0]
    for _ in range(runs):
        d = quantile.difference(binned(control(rng, n)), binned(candidate(rng, n)))
        half = (d.ci_ms[1] - d.ci_ms[0]) / 2
        bare = half - d.control_gap_ms - d.candidate_gap_ms
        intervals = [
            (d.difference_ms - bare, d.difference_ms + bare),
            d.ci_ms,
            d.bounds_ms,
        ]
        for i, (low, high) in enumerate(intervals):
            hits[i] += low <= true <= high
            widths[i] += (high - low) / 2 / runs
    return " | ".join(f"{simcli.rate(h, runs)} (±{w:.3g})" for h, w in zip(hits, widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--requests", default="500,5000,50000", help="requests per arm, comma-separated")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    print(f"seed {args.seed}, {args.runs} runs per row; coverage (mean half-width, ms): no gap | ci_ms | bounds_ms")
    for name, world in worlds().items():
        for n in (int(x) for x in args.requests.split(",")):
            print(f"{name:44s} {n:6d} per arm: {run(world, n, args.runs, rng)}", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
