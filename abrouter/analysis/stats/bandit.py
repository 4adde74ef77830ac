"""Thompson sampling: traffic weights proportional to the posterior probability of being best.

Stratified by weight epoch. Every bandit weight change opens an epoch, so the arms' traffic
comes from different mixes of epochs; if the metric drifts over time (a weekday effect, a
campaign), an arm's pooled mean mostly reflects *when* it had traffic, and the arm that
was favoured when the metric was high looks best (Simpson's paradox; a test measures the
bias). Each arm's posterior is therefore that of its standardised mean,
θ_a = Σ_e w_e·θ_a,e, with the same epoch weights w_e for every arm:

    w_e ∝ 1 / Σ_a 1/n_a,e        (sizes only, never outcomes: see `estimate`),

the k-arm form of the Mantel–Haenszel weight n_c·n_t/(n_c + n_t). An epoch in which some
arm has ≤ 1 unit is left out; an arm with no such epoch at all has no posterior (it
keeps the floor) and is left out of the weights. With one usable epoch, binary arms draw from their exact
Beta(1 + s, 1 + n − s) posterior; with several, from N(Σ w_e·p̂_a,e, Σ w_e²·V_a,e) with
the floored binomial variance (`estimate.floored_variance`, never zero), as the Bayesian
summaries of a stratified comparison do. Continuous and ratio metrics always use the
normal posterior.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from abrouter.analysis.stats import estimate
from abrouter.analysis.stats.compare import Direction, Kind
from abrouter.analysis.stats.sample import Sample


def thompson_weights(
    samples: Mapping[str, Sample | Sequence[Sample]],
    *,
    kind: Kind,
    direction: Direction,
    floor: float,
    rng: np.random.Generator,
    draws: int = 10_000,
) -> dict[str, float]:
    """P(best) per arm by Monte Carlo, floored so every arm gets >= floor, summing to 1.

    `samples` holds each arm's epoch strata, aligned by index across arms (or one Sample:
    one stratum). weight = floor + (1 − k·floor)·P(best). Raises ValueError when
    k·floor > 1 or the arms have different numbers of strata.
    """
    names = list(samples)
    if len(names) * floor > 1 or floor < 0:
        raise ValueError(f"floor: {len(names)} arms x {floor} exceeds 1")
    strata = {name: _strata(samples[name]) for name in names}
    if len({len(s) for s in strata.values()}) > 1:
        raise ValueError("samples: every arm needs the same number of epoch strata")
    # An arm without data in any epoch has no posterior; the others are still compared.
    present = {name: s for name, s in strata.items() if any(x.n > 1 for x in s)}
    weights = epoch_weights(present) if present else np.zeros(0)
    columns = [_draws(strata[name], weights, kind, rng, draws) if name in present else _none(draws) for name in names]
    matrix = np.column_stack(columns)
    # Arms without a posterior drew NaN: they never count as best, but keep the floor.
    matrix = np.where(np.isnan(matrix), -np.inf, matrix if direction == "increase" else -matrix)
    best = np.bincount(np.argmax(matrix, axis=1), minlength=len(names)) / draws
    if np.all(np.isneginf(matrix)):
        best = np.full(len(names), 1 / len(names))
    return {name: float(floor + (1 - len(names) * floor) * b) for name, b in zip(names, best)}


def epoch_weights(strata: Mapping[str, Sequence[Sample]]) -> np.ndarray:
    """w_e ∝ 1/Σ_a 1/n_a,e, normalised to sum to 1; 0 where some arm has <= 1 unit."""
    n = np.array([[s.n for s in arm] for arm in strata.values()], dtype=float)
    usable = np.all(n > 1, axis=0)
    with np.errstate(divide="ignore"):
        w = np.where(usable, 1 / np.sum(1 / np.where(n > 0, n, 1.0), axis=0), 0.0)
    total = w.sum()
    return w / total if total > 0 else w


def _strata(sample: Sample | Sequence[Sample]) -> list[Sample]:
    return [sample] if isinstance(sample, Sample) else list(sample)


def _draws(strata: list[Sample], weights: np.ndarray, kind: Kind, rng: np.random.Generator, draws: int) -> np.ndarray:
    used = [(w, s) for w, s in zip(weights, strata) if w > 0]
    if not used:
        return _none(draws)
    if kind == "binary" and len(used) == 1 and not used[0][1].is_ratio:
        sample = used[0][1]
        return rng.beta(1 + sample.sum, 1 + sample.n - sample.sum, size=draws)
    variance = estimate.floored_variance(kind)
    mean = sum(w * s.mean for w, s in used)
    var = sum(w**2 * variance(s) for w, s in used)
    if not (math.isfinite(var) and math.isfinite(mean)):
        return _none(draws)
    return rng.normal(mean, math.sqrt(var), size=draws)


def _none(draws: int) -> np.ndarray:
    return np.full(draws, np.nan)
