"""Sample-ratio mismatch: do the units per arm match the split the weights promised?

The analyzer looks again and again, so the decision uses an **anytime-valid** test: the
sequential multinomial test of Lindon & Malek (2022, "Anytime-valid inference for
multinomial count data", NeurIPS). Under H0 the units of an epoch arrive as i.i.d.
categorical draws with the epoch's split θ. Mixing the alternative over a Dirichlet(α)
prior gives the Bayes factor

    BF = Γ(Σα) / Γ(Σα + n) · Π_v Γ(α_v + x_v) / Γ(α_v) / Π_v θ_v^{x_v},

a nonnegative martingale under H0 with BF_0 = 1. The epochs follow one another in time
(units are counted in the epoch of their first exposure), so the product of the epochs'
Bayes factors is one martingale over the whole experiment, and by Ville's inequality
P(BF ≥ 1/α at any look) ≤ α: the false-flag rate stays at `srm_alpha` however many looks.
p = min(1, 1/BF). α_v = κ · θ_v centres the prior on the null.

The concentration κ sets which mismatches the test sees: a prior that weighs like κ units
expects deviations of the split of about 1/√κ. κ = 100 alone caught gross mismatches fast
but never flagged Kohavi's published example (821,588 vs 815,482 at 50/50, a 0.37% skew:
p 0.00146 at srm_alpha 0.001; issue 18, finding 4). So the test mixes over
`CONCENTRATIONS` (1e2, 1e4, 1e6) with equal weights:

    BF = (1/K) Σ_κ Π_e BF_e(κ),

an average of nonnegative martingales with mean 1, hence itself one, and Ville's bound
holds as before. Kohavi's example: p = 0.00038 (flagged). It costs a factor of at most K = 3
against the best single κ in hindsight.

The Pearson chi-square p of the weight-integrated split is still reported
(`chi_square_p`), for one pre-planned look only: re-run at every look, it flags an A/A
experiment more often the more it is looked at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special
from scipy import stats as sps

#: Σα of the Dirichlet mixture: the prior weighs like this many units. Smaller values
#: detect gross mismatches sooner, larger ones small mismatches at large n.
PRIOR_CONCENTRATION = 100.0
#: The concentrations the test mixes over, with equal weights (module docstring).
CONCENTRATIONS = (1e2, 1e4, 1e6)


@dataclass(frozen=True)
class SrmResult:
    #: Anytime-valid p (sequential multinomial test); 1.0 with fewer than two arms.
    p_value: float
    flagged: bool
    #: Units per arm, summed over the epochs used (arms with zero expected left out).
    observed: dict[str, float]
    #: Expected units per arm: Σ_e units_e · w_{e,v} / Σ_v w_{e,v}.
    expected: dict[str, float]
    #: Fixed-horizon Pearson chi-square p of observed vs expected: valid for one look only.
    chi_square_p: float = 1.0


def srm_check(
    units_by_epoch: Mapping[int, Mapping[str, float]],
    weights_by_epoch: Mapping[int, Mapping[str, float]],
    *,
    alpha: float = 0.001,
) -> SrmResult:
    """Sequential test of the units per epoch against each epoch's split; flagged = p < alpha.

    units_by_epoch[e][v] is the units first exposed to variant v under epoch e;
    weights_by_epoch[e][v] the configured (relative) weights of that epoch. Arms with zero
    weight in an epoch are left out of that epoch's test (the test is conditional on the
    arms the split can reach); epochs without weights are skipped.
    """
    observed, expected = _integrate(units_by_epoch, weights_by_epoch)
    arms = sorted(name for name, value in expected.items() if value > 0)
    log_bf = mixture_log_bayes_factor(units_by_epoch, weights_by_epoch)
    p = 1.0 if len(arms) < 2 else min(1.0, math.exp(-log_bf))
    return SrmResult(
        p_value=p,
        flagged=p < alpha,
        observed={a: observed[a] for a in arms},
        expected={a: expected[a] for a in arms},
        chi_square_p=_chi_square([observed[a] for a in arms], [expected[a] for a in arms]),
    )


def mixture_log_bayes_factor(
    units_by_epoch: Mapping[int, Mapping[str, float]],
    weights_by_epoch: Mapping[int, Mapping[str, float]],
    *,
    concentrations: tuple[float, ...] = CONCENTRATIONS,
) -> float:
    """log of (1/K) Σ_κ Π_e BF_e(κ): the epochs' product per concentration, averaged over them."""
    per_kappa = [
        sum(
            log_bayes_factor(units_by_epoch[e], weights_by_epoch.get(e, {}), concentration=kappa)
            for e in units_by_epoch
            if weights_by_epoch.get(e)
        )
        for kappa in concentrations
    ]
    return float(special.logsumexp(per_kappa) - math.log(len(per_kappa)))


def log_bayes_factor(
    units: Mapping[str, float], weights: Mapping[str, float], *, concentration: float = PRIOR_CONCENTRATION
) -> float:
    """log BF of one epoch's counts: Dirichlet-multinomial mixture over the null multinomial."""
    positive = {v: w for v, w in weights.items() if w > 0}
    if len(positive) < 2:
        return 0.0
    names = sorted(positive)
    total = sum(positive.values())
    theta = np.array([positive[v] / total for v in names])
    x = np.array([float(units.get(v, 0.0)) for v in names])
    return float(log_bayes_factor_counts(x, theta, concentration=concentration))


def log_bayes_factor_counts(
    x: npt.NDArray[np.float64], theta: npt.NDArray[np.float64], *, concentration: float = PRIOR_CONCENTRATION
) -> npt.NDArray[np.float64]:
    """The same on arrays: counts x[..., k] against the split theta[k] (for simulations)."""
    a = concentration * theta
    n = x.sum(axis=-1)
    terms = special.gammaln(a + x) - special.gammaln(a) - x * np.log(theta)
    return np.asarray(special.gammaln(concentration) - special.gammaln(concentration + n) + terms.sum(axis=-1))


def mixture_log_bayes_factor_counts(
    x: npt.NDArray[np.float64], theta: npt.NDArray[np.float64], *, concentrations: tuple[float, ...] = CONCENTRATIONS
) -> npt.NDArray[np.float64]:
    """The mixture over `concentrations` on arrays of one epoch's counts x[..., k] (for simulations)."""
    per_kappa = np.stack([log_bayes_factor_counts(x, theta, concentration=k) for k in concentrations])
    return np.asarray(special.logsumexp(per_kappa, axis=0) - math.log(len(concentrations)))


def _integrate(
    units_by_epoch: Mapping[int, Mapping[str, float]], weights_by_epoch: Mapping[int, Mapping[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Observed and expected units per arm, summed over the epochs that have weights."""
    observed: dict[str, float] = {}
    expected: dict[str, float] = {}
    for epoch, units in units_by_epoch.items():
        weights = {name: max(w, 0.0) for name, w in weights_by_epoch.get(epoch, {}).items()}
        total_weight, total_units = sum(weights.values()), sum(units.values())
        if not total_weight:
            continue  # no split was configured for these units: nothing to expect
        for name in weights.keys() | units.keys():
            expected[name] = expected.get(name, 0.0) + total_units * weights.get(name, 0.0) / total_weight
            observed[name] = observed.get(name, 0.0) + units.get(name, 0.0)
    return observed, expected


def _chi_square(observed: list[float], expected: list[float]) -> float:
    """Pearson goodness of fit with k − 1 df, the expected counts rescaled to the observed total.

    Rescaling matters only when an excluded (zero-weight) arm still received units.
    """
    total_observed, total_expected = sum(observed), sum(expected)
    if len(observed) < 2 or not total_observed:
        return 1.0
    scaled = [e * total_observed / total_expected for e in expected]
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, scaled))
    return float(sps.chi2.sf(statistic, df=len(observed) - 1))
