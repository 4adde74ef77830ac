"""Defect 1 (issue 9): a returning user must be one unit, credited to its first exposure.

A/A with returning users of heterogeneous propensity over the default ramp (candidate at
5%, 25%, 50%, one epoch each; assignment by a fixed bucket, so a ramp moves users from
the control to the candidate). The unit totals are accounted two ways and fed to the
analyzer's own `compare` (stratified by epoch):

- per (unit, epoch, variant) cell, as flush.lua did before: a returning user is a unit in
  every epoch, the strata are correlated, and the reported variance is too small;
- intent-to-treat, as flush.lua does now (its sums are checked against this same
  reference recomputation in tests/router/eventlog/test_eventlog.py): each user once, in
  the epoch and variant of the first exposure.

Measured: var(Δ̂) / mean(reported SE²) over the runs. Monte-Carlo error of a variance
ratio over R runs ≈ ratio·√(2/R).
"""

from __future__ import annotations

import math

import numpy as np

from abrouter.analysis.stats.compare import compare
from abrouter.analysis.stats.sample import Sample

RAMP = (0.05, 0.25, 0.50)
USERS_PER_EPOCH = 1500
RETURN = 0.7  # chance that a user comes back in each later epoch


def simulate(rng: np.random.Generator, *, itt: bool) -> tuple[float, float]:
    """One A/A experiment: (Δ̂, reported SE) of the stratified mean difference of clicks."""
    epochs = len(RAMP)
    first = np.repeat(np.arange(epochs), USERS_PER_EPOCH)
    n = first.size
    bucket = rng.random(n)
    propensity = rng.gamma(0.5, 2.0, n)  # heterogeneous users: a few click a lot
    # visits[u, e]: the user's requests in epoch e (none before the first epoch).
    active = (np.arange(epochs)[None, :] == first[:, None]) | (
        (np.arange(epochs)[None, :] > first[:, None]) & (rng.random((n, epochs)) < RETURN)
    )
    visits = np.where(active, rng.integers(1, 4, (n, epochs)), 0)
    clicks = rng.poisson(propensity[:, None] * visits)
    candidate = bucket[:, None] < np.array(RAMP)[None, :]  # the variant in each epoch
    arms: dict[bool, list[Sample]] = {False: [], True: []}
    for e in range(epochs):
        for arm in (False, True):
            if itt:  # first exposure only, with every later click
                who = (first == e) & (candidate[:, e] == arm)
                x = clicks[who].sum(axis=1)
            else:  # one unit per (user, epoch, variant) cell
                who = active[:, e] & (candidate[:, e] == arm)
                x = clicks[who, e]
            arms[arm].append(Sample.from_values(x))
    c = compare(
        arms[False],
        arms[True],
        kind="continuous",
        direction="increase",
        alpha=0.05,
        expected_units=2000,
        variant="candidate",
        metric="clicks",
    )
    lo, hi = c.absolute_ci
    return c.absolute_lift, (hi - lo) / (2 * 1.959963984540054)


def variance_ratio(seed: int, runs: int, *, itt: bool) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    draws = np.array([simulate(rng, itt=itt) for _ in range(runs)])
    ratio = float(np.var(draws[:, 0], ddof=1) / np.mean(draws[:, 1] ** 2))
    return ratio, ratio * math.sqrt(2 / runs)


def test_intent_to_treat_reports_the_true_variance_with_returning_users() -> None:
    ratio, mc = variance_ratio(seed=11, runs=400, itt=True)
    assert abs(ratio - 1.0) < 3 * mc + 0.03, f"variance ratio {ratio:.3f} ± {mc:.3f}"


def test_per_cell_accounting_understates_the_variance() -> None:
    """The defect the fix removes: the same users counted per cell (flush.lua before)."""
    ratio, mc = variance_ratio(seed=11, runs=400, itt=False)
    assert ratio > 1.0 + 3 * mc, f"variance ratio {ratio:.3f} ± {mc:.3f}"
