"""Thompson sampling: traffic weights proportional to the posterior probability of being best."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from abrouter.analysis.stats.compare import Direction, Kind
from abrouter.analysis.stats.sample import Sample


def thompson_weights(
    samples: Mapping[str, Sample],
    *,
    kind: Kind,
    direction: Direction,
    floor: float,
    rng: np.random.Generator,
    draws: int = 10_000,
) -> dict[str, float]:
    """P(best) per arm by Monte Carlo, floored so every arm gets >= floor, summing to 1.

    Posteriors: Beta(1 + s, 1 + n − s) for binary mean metrics, else Normal(mean,
    mean_variance). weight = floor + (1 − k·floor)·P(best). Raises ValueError when
    k·floor > 1.
    """
    names = list(samples)
    if len(names) * floor > 1 or floor < 0:
        raise ValueError(f"floor: {len(names)} arms x {floor} exceeds 1")
    columns = [_draws(samples[name], kind, rng, draws) for name in names]
    matrix = np.column_stack(columns)
    # Arms without a posterior drew NaN: they never count as best, but keep the floor.
    matrix = np.where(np.isnan(matrix), -np.inf, matrix if direction == "increase" else -matrix)
    best = np.bincount(np.argmax(matrix, axis=1), minlength=len(names)) / draws
    if np.all(np.isneginf(matrix)):
        best = np.full(len(names), 1 / len(names))
    return {name: float(floor + (1 - len(names) * floor) * b) for name, b in zip(names, best)}


def _draws(sample: Sample, kind: Kind, rng: np.random.Generator, draws: int) -> np.ndarray:
    if kind == "binary" and not sample.is_ratio:
        return rng.beta(1 + sample.sum, 1 + sample.n - sample.sum, size=draws)
    variance = sample.mean_variance
    if not (math.isfinite(variance) and math.isfinite(sample.mean)):
        return np.full(draws, np.nan)
    return rng.normal(sample.mean, math.sqrt(variance), size=draws)
