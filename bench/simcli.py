"""What the coverage and power simulations under bench/ share: their flags and how a rate prints.

Imported as a sibling (`python bench/sim_X.py` puts bench/ first on the path).
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def parse(doc: str | None, *, runs: int = 2_000) -> tuple[argparse.Namespace, np.random.Generator]:
    """`--runs` and `--seed` of a simulation whose docstring's first paragraph describes it,
    and its generator."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    return args, np.random.default_rng(args.seed)


def rate(hits: float, runs: int) -> str:
    """A share of `runs` with its Monte-Carlo standard error."""
    r = hits / runs
    return f"{r:.3f} ± {math.sqrt(r * (1 - r) / runs):.3f}"
