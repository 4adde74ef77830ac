"""Sequential power with and without CUPED, at the plan's sample size (vectorised).

A binary metric at 5%, +10% relative (`abrouter plan --baseline 0.05 --mde 0.1 --relative`:
31,231 units per arm), looked at `--looks` times, with a pre-exposure covariate whose
correlation with the metric is about `--rho`. The covariate must not depend on the arm:
each unit has potential outcomes x0 = U < p0 and x1 = U < p1 from one uniform U, and its
covariate is c = a·x0 + N(0, 1), with a set so that corr(x0, c) = rho; the arm only decides
which of x0 and x1 is observed. Each look runs the mSPRT of `stats.sequential` on the
unadjusted Δ̂, V and on `stats.cuped.adjusted_difference`'s Δ̂_cuped, V_cuped (one stratum,
50/50, `expected_units` = the plan's n), as `compare()` does. Also A/A (p1 = p0).

    python bench/sim_cuped.py [--experiments 1000] [--looks 20] [--rho 0.5] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from abrouter.analysis.stats import cuped, sequential
from abrouter.analysis.stats.power import sample_size

ALPHA = 0.05


def run(rng: np.random.Generator, *, experiments: int, looks: int, n: int, p0: float, p1: float, rho: float) -> dict:
    per = math.ceil(n / looks)
    a = rho / math.sqrt(1 - rho**2) / math.sqrt(p0 * (1 - p0))
    sums = {arm: [np.zeros(experiments) for _ in range(6)] for arm in ("control", "candidate")}
    hit = {"cuped": np.zeros(experiments, bool), "plain": np.zeros(experiments, bool)}
    for _ in range(looks):
        for arm, p in (("control", p0), ("candidate", p1)):
            u = rng.random((experiments, per))
            x, c = (u < p).astype(float), a * (u < p0) + rng.standard_normal((experiments, per))
            s = cuped.Sums.from_units(x, c)
            new = (s.n, s.sum, s.sum_sq, s.cov_sum, s.cov_sum_sq, s.cov_products)
            sums[arm] = [old + np.asarray(v) for old, v in zip(sums[arm], new)]
        d = cuped.adjusted_difference(cuped.Sums(*sums["control"]), cuped.Sums(*sums["candidate"]))
        r = sequential.mixing_ratio(sums["control"][0], n, ALPHA)
        for name, diff, var in (
            ("cuped", d.difference, d.variance),
            ("plain", d.raw_difference, d.raw_variance),
        ):
            hit[name] |= (sequential.p_value(diff / np.sqrt(var), r) < ALPHA) & (diff > 0)
    z = {"cuped": d.difference / np.sqrt(d.variance), "plain": d.raw_difference / np.sqrt(d.raw_variance)}
    return {
        "reduction": float(np.mean(d.variance_reduction)),
        "sequential": {k: float(v.mean()) for k, v in hit.items()},
        "fixed": {k: float((v > 1.959964).mean()) for k, v in z.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--looks", type=int, default=20)
    parser.add_argument("--rho", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    p0 = 0.05
    p1 = p0 * 1.1
    n = sample_size(baseline=p0, mde=0.1, relative=True).units_per_arm
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(f"{args.experiments} experiments x {args.looks} looks, {n:,} units per arm, rho {args.rho}, seed {args.seed}")

    def mc(v: float) -> float:  # the Monte-Carlo standard error of a rate
        return math.sqrt(v * (1 - v) / args.experiments)

    for label, p in (("A/A", p0), ("+10%", p1)):
        out = run(rng, experiments=args.experiments, looks=args.looks, n=n, p0=p0, p1=p, rho=args.rho)
        what = "false promotion" if label == "A/A" else "power"
        print(f"{label:5} variance reduction 1 - V_cuped/V (mean)              {out['reduction']:.3f}")
        for name in ("plain", "cuped"):
            seq, fixed = out["sequential"][name], out["fixed"][name]
            print(f"{label:5} {name}: sequential {what:16} (any look)    {seq:.3f}  (±{mc(seq):.3f})")
            print(f"{label:5} {name}: fixed horizon, last look, candidate ahead {fixed:.3f}  (±{mc(fixed):.3f})")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
