"""A/A sample-ratio checks over many looks: the sequential test vs the chi-square re-run.

    .venv/bin/python bench/sim_srm.py [--experiments 10000] [--looks 20160] [--step 5] [--seed 1]

Each A/A experiment assigns `step` new units per look at a 50/50 split (20,160 looks =
14 days at `analyze --every 60`) and checks the split at every look with
`srm.mixture_log_bayes_factor_counts` (the analyzer's sequential multinomial test,
mixed over the concentrations 1e2, 1e4 and 1e6; flag when BF ≥ 1/srm_alpha) and with
the Pearson chi-square (flag when p < srm_alpha), at the default srm_alpha = 0.001 and
at 0.05. Prints the share of experiments flagged at some look, with its Monte-Carlo
error √(r(1 − r)/R). Experiments run in chunks, so memory stays bounded (about 100 MB);
it takes a few minutes on one core at the defaults.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats as sps

from abrouter.analysis.stats.srm import mixture_log_bayes_factor_counts

ALPHAS = (0.001, 0.05)


def flagged(candidate: np.ndarray, step: int) -> dict[str, np.ndarray]:
    """Per experiment of the chunk and per alpha: flagged at some look, by either test."""
    looks = candidate.shape[1]
    n = step * np.arange(1, looks + 1)[None, :]
    x = np.stack([n - candidate, candidate], axis=-1).astype(float)
    log_bf = mixture_log_bayes_factor_counts(x, np.array([0.5, 0.5]))
    z2 = (candidate - n / 2) ** 2 / (n / 4)
    out = {}
    for alpha in ALPHAS:
        out[f"sequential@{alpha:g}"] = (log_bf >= math.log(1 / alpha)).any(axis=1)
        out[f"chi-square@{alpha:g}"] = (z2 > sps.chi2.isf(alpha, 1)).any(axis=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--looks", type=int, default=20_160)
    parser.add_argument("--step", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    chunk = max(1, 2_000_000 // args.looks)
    counts: dict[str, int] = {}
    started = time.perf_counter()
    done = 0
    while done < args.experiments:
        size = min(chunk, args.experiments - done)
        candidate = np.cumsum(rng.binomial(args.step, 0.5, (size, args.looks)), axis=1)
        for name, hits in flagged(candidate, args.step).items():
            counts[name] = counts.get(name, 0) + int(hits.sum())
        done += size
    runs = args.experiments
    print(f"A/A SRM over {args.looks} looks, {args.step} units per look, {runs} experiments, seed {args.seed}")
    for name, hits in counts.items():
        rate = hits / runs
        print(f"  {name:<18} flagged {rate:.4%} ± {math.sqrt(rate * (1 - rate) / runs):.4%}")
    print(f"  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
