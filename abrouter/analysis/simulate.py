"""Closed-loop simulated experiments, analysed look by look by the real analyzer.

Each look: new users arrive and are assigned by the weights the previous decision set
(a fixed bucket per user, as the router's hash does, so a ramp moves users from the
control to the candidate); `analyzer.analyze` (compare, guardrails, SRM, `decision.decide`)
runs on the data so far with the previous look's running results; its decision is
applied (ramp / bandit weights open a new epoch; promote, rollback and stop end the run).
Nothing of the analysis is re-implemented here: bench/sim_sequential.py and the error-rate
tests in tests/analysis/ measure the real policy.

Users are credited as the router credits them (intent-to-treat): once, to the epoch and
variant of their first exposure, with every later outcome. With a balanced ramp
(`AnalysisSettings.ramp_rest`) a third arm, ``rest``, serves the control's rates outside
the comparison, and the weights the decision sets put the new users in it.

Two worlds (`World.returning`):

- fresh: each user visits once and converts (binary) with the arm's rate at that look;
  with `covariate`, each user also brings a pre-exposure count c ~ Binomial(6, π) of a
  propensity π ~ Beta(0.1, 1.9)·(5%/mean) that also drives the conversion, so that
  corr(x, c) ≈ 0.5 (checked in tests/analysis/test_simulation_decisions.py), and the
  metric is CUPED-adjusted (`cuped_samples`);
- returning: A/A clicks of users with heterogeneous propensity (Gamma(0.5, 2)) who come
  back at each later look with probability `return_rate`, Poisson clicks per visit; the
  metric is the user's total (continuous).

Pure: randomness comes in as a `numpy.random.Generator`. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from abrouter.analysis import analyzer
from abrouter.analysis import data as d
from abrouter.analysis.stats import clock, horizon
from abrouter.analysis.stats.compare import Running
from abrouter.analysis.stats.sample import Sample
from abrouter.contract.model import AnalysisSettings, Metric

ARMS = ("control", "candidate")
#: [balanced ramp] The arm that serves the control's model outside the comparison.
REST = "rest"
DAY = 86400.0
#: Rate of the candidate at look k (0-based) given the control's rate; `constant` by default.
Effect = Callable[[int, float], float]
#: Pre-exposure visits in the covariate world: with Beta(0.1, 1.9) propensities this gives
#: corr(conversion, pre-exposure count) = 0.5 (module docstring).
COVARIATE_VISITS = 6


def constant(lift: float) -> Effect:
    """A candidate whose rate is the control's times (1 + lift) at every look."""
    return lambda _look, base: base * (1 + lift)


@dataclass(frozen=True)
class World:
    base: float = 0.05
    effect: Effect = field(default=constant(0.0))
    returning: bool = False
    #: Returning world: the chance per look that a user seen before comes back.
    return_rate: float = 0.3
    #: Fresh world only: simulate a pre-exposure covariate and CUPED-adjust the metric.
    covariate: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a simulated experiment ended."""

    action: str  # "promote", "rollback", "stop" or "continue" (the last look passed)
    look: int  # 0-based look of that action (the last look for "continue")
    units: int  # units of both arms at that look


class _Users:
    """Per-user state of one returning-users experiment, in arrays preallocated for every look."""

    def __init__(self, capacity: int) -> None:
        self.size = 0
        self.epoch = np.zeros(capacity, dtype=np.int64)
        self.arm = np.zeros(capacity, dtype=np.int64)  # index in the run's arms
        self.propensity = np.zeros(capacity)
        self.clicks = np.zeros(capacity)

    def add(self, rng: np.random.Generator, epoch: int, arm: np.ndarray) -> None:
        new = slice(self.size, self.size + arm.size)
        self.epoch[new], self.arm[new] = epoch, arm
        self.propensity[new] = rng.gamma(0.5, 2.0, arm.size)  # heterogeneous: a few click a lot
        self.clicks[new] = rng.poisson(self.propensity[new])
        self.size += arm.size

    def come_back(self, rng: np.random.Generator, rate: float) -> None:
        """About `rate` of the users seen before return and click again (credited to their first exposure).

        Drawn as Binomial(size, rate) returns at random users (with replacement: the cost
        is that of the returns, not of every user, which matters over 2,000 looks).
        """
        back = rng.integers(0, self.size, rng.binomial(self.size, rate)) if self.size else np.zeros(0, dtype=int)
        np.add.at(self.clicks, back, rng.poisson(self.propensity[back]))


def run(
    rng: np.random.Generator,
    *,
    world: World,
    settings: AnalysisSettings,
    looks: int,
    per_look: int,
) -> Outcome:
    """One experiment of `looks` looks with `per_look` new users each (module docstring)."""
    arms = (*ARMS, REST) if settings.ramp_rest else ARMS
    weights = _first_weights(settings)
    epochs: list[d.Epoch] = [d.Epoch(1, dict(weights), 0.0)]
    sums: dict[tuple[int, str], np.ndarray] = {}  # fresh world: (epoch, arm) -> [n, Σx, Σc, Σc², Σxc]
    users = _Users(looks * per_look if world.returning else 0)
    previous: dict[tuple[str, str], Running] = {}
    step = settings.max_duration_s / looks * 0.999
    metric = Metric(name="m", kind="continuous" if world.returning or world.covariate else "binary")
    for look in range(looks):
        epoch = epochs[-1].epoch
        _arrive(rng, world, look, epoch, weights, per_look, sums, users)
        strata = _strata(world, sums, users, [e.epoch for e in epochs], arms)
        data = d.ExperimentData(
            name="sim",
            metrics=(metric,),
            arms=tuple(d.Arm(name, weights[name], strata[name]) for name in arms),
            epochs=tuple(epochs),
            settings=settings,
            started_at=0.0,
        )
        result = analyzer.analyze(data, now=(look + 1) * step, previous=previous, rng=rng)
        previous = result.running()
        decision = result.decision
        units = sum(a.units for a in data.arms)
        if decision.action in ("promote", "rollback", "stop"):
            return Outcome(decision.action, look, units)
        if decision.action == "ramp":
            weights = dict(decision.weights)
            epochs.append(d.Epoch(epoch + 1, dict(weights), (look + 1) * step))
    return Outcome("continue", looks - 1, units)


def _first_weights(settings: AnalysisSettings) -> dict[str, float]:
    """The ramp's first step (balanced: the control at the candidate's share), else the even split."""
    if not settings.ramp or settings.bandit.enabled:
        return {name: 100.0 / len(ARMS) for name in ARMS}
    first = settings.ramp[0]
    if settings.ramp_rest:
        return {"control": first, "candidate": first, REST: 100.0 - 2 * first}
    return {"control": 100.0 - first, "candidate": first}


def _arrive(
    rng: np.random.Generator,
    world: World,
    look: int,
    epoch: int,
    weights: dict[str, float],
    per_look: int,
    sums: dict[tuple[int, str], np.ndarray],
    users: _Users,
) -> None:
    names = [n for n in (*ARMS, REST) if n in weights]  # the run's arms, in their order
    # The candidate's range first: u < its weight, as with two arms before the rest existed
    # (the seeded runs of the tests and bench/ draw the same users).
    order = ["candidate", *(n for n in names if n != "candidate")]
    edges = np.cumsum([weights[n] for n in order]) / 100.0
    pick = np.minimum(np.searchsorted(edges, rng.random(per_look), side="right"), len(order) - 1)
    arm = np.asarray([names.index(n) for n in order])[pick]
    candidate = arm == names.index("candidate")
    if world.returning:
        users.come_back(rng, world.return_rate)
        users.add(rng, epoch, arm)
        return
    rates = np.where(candidate, world.effect(look, world.base), world.base)
    if world.covariate:
        # π ~ Beta(0.1, 1.9) has mean 5%; scaled so the control's mean rate is world.base.
        pi = rng.beta(0.1, 1.9, per_look) * world.base / 0.05
        c = rng.binomial(COVARIATE_VISITS, np.minimum(pi, 1.0)).astype(float)
        x = (rng.random(per_look) < np.minimum(pi * rates / world.base, 1.0)).astype(float)
    else:
        c = np.zeros(per_look)
        x = (rng.random(per_look) < rates).astype(float)
    for i, name in enumerate(names):
        mask = arm == i
        row = np.array([mask.sum(), x[mask].sum(), c[mask].sum(), (c[mask] ** 2).sum(), (x[mask] * c[mask]).sum()])
        sums[(epoch, name)] = sums.get((epoch, name), np.zeros(5)) + row


def _strata(
    world: World,
    sums: dict[tuple[int, str], np.ndarray],
    users: _Users,
    epochs: Sequence[int],
    arms: Sequence[str] = ARMS,
) -> dict[str, tuple[d.Stratum, ...]]:
    if world.returning:
        return _returning_strata(users, epochs, arms)
    if world.covariate:
        return cuped_samples(sums, epochs, arms)
    out: dict[str, tuple[d.Stratum, ...]] = {}
    for name in arms:
        rows = [(e, sums.get((e, name), np.zeros(5))) for e in epochs]
        out[name] = tuple(d.Stratum(e, int(r[0]), {"m": Sample(float(r[0]), float(r[1]))}) for e, r in rows)
    return out


def _returning_strata(users: _Users, epochs: Sequence[int], arms: Sequence[str]) -> dict[str, tuple[d.Stratum, ...]]:
    """Per (epoch, arm) of first exposure: n, Σx, Σx² of the users' click totals so far."""
    k, width = users.size, len(arms)
    epoch_index = np.searchsorted(np.asarray(epochs), users.epoch[:k])
    group = width * epoch_index + users.arm[:k]
    x = users.clicks[:k]
    size = width * len(epochs)
    n = np.bincount(group, minlength=size)
    sums, squares = np.bincount(group, x, minlength=size), np.bincount(group, x * x, minlength=size)
    out: dict[str, tuple[d.Stratum, ...]] = {}
    for arm, name in enumerate(arms):
        cells = [width * i + arm for i in range(len(epochs))]
        out[name] = tuple(
            d.Stratum(e, int(n[c]), {"m": Sample(float(n[c]), float(sums[c]), float(squares[c]))})
            for e, c in zip(epochs, cells)
        )
    return out


def cuped_samples(
    sums: dict[tuple[int, str], np.ndarray], epochs: Sequence[int], arms: Sequence[str] = ARMS
) -> dict[str, tuple[d.Stratum, ...]]:
    """Strata whose Samples carry the covariate's sums, so the analyzer adjusts them by CUPED.

    From the per-(epoch, arm) sums [n, Σx, Σc, Σc², Σxc] (x binary, so Σx² = Σx), as the
    router stores them; `compare()` then applies `abrouter.analysis.stats.cuped` per
    stratum (θ pooled across the arms), exactly as on real data.
    """
    out: dict[str, tuple[d.Stratum, ...]] = {}
    for name in arms:
        strata = []
        for e in epochs:
            n, sx, sc, scc, sxc = (float(v) for v in sums.get((e, name), np.zeros(5)))
            sample = Sample(n, sx, sum_sq=sx, cov_sum=sc, cov_sum_sq=scc, cov_products=sxc)
            strata.append(d.Stratum(e, int(n), {"m": sample}))
        out[name] = tuple(strata)
    return out


def settings_for(*, expected_units: int, ramp: bool = True, bandit: bool = False, **extra: object) -> AnalysisSettings:
    """The default settings, tuned to `expected_units`, without guardrails (no built-in metrics are simulated)."""
    base = AnalysisSettings(expected_units_per_arm=expected_units, guardrails=())
    out = replace(base, **extra) if extra else base  # type: ignore[arg-type]
    if not ramp:
        out = replace(out, ramp=())
    if bandit:
        out = replace(out, bandit=replace(out.bandit, enabled=True))
    return out


def drift_crossings(
    rng: np.random.Generator, rates: np.ndarray, *, paths: int, per_look: int, alpha: float = 0.05
) -> tuple[float, float]:
    """Vectorised A/A at 50/50 under a drifting base rate: the share of paths the decision design crosses.

    `per_look` fresh binary units per arm at every look, at `rates[k]` in both arms; the
    horizon at half the looks' units. At every look the design's p (`horizon.p_value`) on
    z = Δ̂/√V (arm variances floored as `estimate.floored_variance` floors them), on the
    units clock t = n/n* and on the information clock (`clock.time`, the reference pinned
    as `clock.reference` pins it). Returns (units clock, information clock).
    """
    horizon_units = rates.size * per_look / 2
    control, candidate = np.zeros(paths), np.zeros(paths)
    units_clock, information_clock = np.zeros(paths, dtype=bool), np.zeros(paths, dtype=bool)
    ref_t, ref_v = np.zeros(paths), np.zeros(paths)
    for k, rate in enumerate(rates):
        control += rng.binomial(per_look, rate, paths)
        candidate += rng.binomial(per_look, rate, paths)
        n = (k + 1) * per_look
        variance = _floored(control, n) + _floored(candidate, n)
        z = (candidate - control) / n / np.sqrt(variance)
        t = np.full(paths, n / horizon_units)
        if k == 0 or ref_t[0] < clock.PIN_AT:  # the reference follows the looks until PIN_AT
            ref_t, ref_v = t, variance
        units_clock |= horizon.p_value(z, t, alpha) < alpha
        information_clock |= horizon.p_value(z, clock.time(t, variance, ref_t, ref_v), alpha) < alpha
    return float(units_clock.mean()), float(information_clock.mean())


def _floored(successes: np.ndarray, n: int) -> np.ndarray:
    p, q = successes / n, (successes + 1) / (n + 2)
    return np.maximum(p * (1 - p) / n, q * (1 - q) / (n + 2))
