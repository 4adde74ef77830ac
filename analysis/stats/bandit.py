"""Thompson sampling: traffic weights proportional to the posterior probability of being best."""

from __future__ import annotations

from typing import Mapping

import numpy

from analysis.stats.compare import Direction, Kind
from analysis.stats.sample import Sample


def thompson_weights(
    samples: Mapping[str, Sample],
    *,
    kind: Kind,
    direction: Direction,
    floor: float,
    rng: numpy.random.Generator,
    draws: int = 10_000,
) -> dict[str, float]:
    """P(best) per arm by Monte Carlo, floored so every arm gets >= floor, summing to 1.

    Posteriors: Beta(1 + s, 1 + n − s) for binary mean metrics, else Normal(mean,
    mean_variance). weight = floor + (1 − k·floor)·P(best). Raises ValueError when
    k·floor > 1.
    """
    raise NotImplementedError
