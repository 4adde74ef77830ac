"""False discoveries among many secondary metrics, through the real analyzer (issue 18: secondary_correction).

    PYTHONPATH=$PWD .venv/bin/python bench/sim_secondary_fdr.py [--runs 200] [--seed 1]

One candidate, a primary and 12 binary secondary metrics at 10%, 4 of which the candidate
lifts by 15% (relative); 10 looks of 1,000 new users per arm each, every look seeded with
the previous one's running state, as `analyze` runs them. At the last look a secondary
metric is a discovery when its (adjusted) sequential p is below alpha 0.05. Prints, per
`analysis.secondary_correction`, the false discovery rate (false discoveries over
discoveries, 0 when none), the family-wise error (any false discovery) and the power (the
share of the 4 real effects found), ± one MC SE.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np

from abrouter.analysis import analyzer, simulate
from abrouter.analysis import data as d
from abrouter.analysis.stats.sample import Sample
from abrouter.contract.model import Metric

SECONDARY, REAL, BASE, LIFT, LOOKS, PER_LOOK, ALPHA = 12, 4, 0.10, 0.15, 10, 1_000, 0.05
METRICS = (Metric(name="primary", kind="binary"), *(Metric(name=f"s{i}", kind="binary") for i in range(SECONDARY)))


def look(sums: np.ndarray, n: int, correction: str) -> d.ExperimentData:
    settings = replace(
        simulate.settings_for(expected_units=10_000, ramp=False), burn_in_s=0.0, secondary_correction=correction
    )
    arms = tuple(
        d.Arm(name, 50.0, (d.Stratum(1, n, {m.name: Sample(float(n), float(s)) for m, s in zip(METRICS, row)}),))
        for name, row in (("control", sums[0]), ("candidate", sums[1]))
    )
    epochs = (d.Epoch(1, {"control": 50.0, "candidate": 50.0}, 0.0),)
    return d.ExperimentData("fdr", METRICS, arms, epochs, settings, started_at=0.0)


def one_run(rng: np.random.Generator, correction: str) -> tuple[int, int]:
    """(false discoveries, true discoveries) at the last look."""
    rates = np.full((2, 1 + SECONDARY), BASE)
    rates[1, 1 : 1 + REAL] *= 1 + LIFT
    sums = np.zeros((2, 1 + SECONDARY))
    previous: analyzer.Previous = {}
    result = None
    for k in range(1, LOOKS + 1):
        sums += rng.binomial(PER_LOOK, rates)
        result = analyzer.analyze(look(sums, k * PER_LOOK, correction), now=k * 3_600.0, previous=previous)
        previous = result.running()
    assert result is not None
    false = true = 0
    for c in result.comparisons:
        if c.metric == "primary":
            continue
        p = result.secondary.get((c.variant, c.metric), c.sequential_p_value)
        if p < ALPHA:
            real = int(c.metric[1:]) < REAL
            true += real
            false += not real
    return false, true


def summary(rows: list[tuple[int, int]]) -> str:
    fdp = np.array([f / (f + t) if f + t else 0.0 for f, t in rows])
    fwer = np.array([f > 0 for f, _ in rows], dtype=float)
    power = np.array([t / REAL for _, t in rows])
    se = lambda x: x.std() / math.sqrt(len(x))  # noqa: E731
    return " | ".join(f"{x.mean():.3f} ± {se(x):.3f}" for x in (fdp, fwer, power))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"seed {args.seed}, {args.runs} runs; FDR | any false discovery | power, at the last of {LOOKS} looks")
    for correction in ("none", "holm", "bh"):
        rng = np.random.default_rng(args.seed)  # the same worlds for every correction
        rows = [one_run(rng, correction) for _ in range(args.runs)]
        print(f"{correction:5s}: {summary(rows)}", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
