"""A/A crossing of the decision design under a drifting base rate: units vs information clock (issue 18, finding 6).

    PYTHONPATH=$PWD .venv/bin/python bench/sim_clock.py [--paths 10000] [--looks 2000] [--seed 1]

Vectorised A/A at 50/50 (`simulate.drift_crossings`): binary outcomes of fresh users,
`--per-look` per arm at every look, the base rate rising from 2% to 8% over the looks,
constant at 5%, or falling from 8% to 2%; the horizon n* at half the looks' units. At
every look the design's p on the units clock t = n/n* (before) and on `clock.time`, the
information clock (now). Prints the share of paths that cross at some look, ± one
Monte-Carlo SE.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from abrouter.analysis import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--looks", type=int, default=2_000)
    parser.add_argument("--per-look", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"seed {args.seed}, {args.paths} paths, {args.looks} looks of {args.per_look} per arm; A/A crossing at 0.05")
    started = time.perf_counter()
    for label, rates in (
        ("rising 2% -> 8%", np.linspace(0.02, 0.08, args.looks)),
        ("constant 5%", np.full(args.looks, 0.05)),
        ("falling 8% -> 2%", np.linspace(0.08, 0.02, args.looks)),
    ):
        got = simulate.drift_crossings(rng, rates, paths=args.paths, per_look=args.per_look)
        se = [math.sqrt(r * (1 - r) / args.paths) for r in got]
        print(f"{label:<18} units clock {got[0]:.4f} ± {se[0]:.4f}   information clock {got[1]:.4f} ± {se[1]:.4f}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
