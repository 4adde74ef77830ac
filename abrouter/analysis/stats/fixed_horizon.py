"""Fixed-horizon (single look) tests of a difference in means. Two-sided throughout.

These are valid for one look at a pre-planned sample size; the analyzer looks again and
again, so decisions use `abrouter.analysis.stats.sequential` instead. The fixed-horizon numbers are
reported because analysts know them and can check them against R or statsmodels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from abrouter.analysis.stats.sample import Sample


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest test class, despite the name

    statistic: float
    p_value: float
    #: Degrees of freedom (Welch–Satterthwaite, chi-square); inf for a z-test.
    df: float = math.inf


def two_proportion_z(control: Sample, candidate: Sample) -> TestResult:
    """Pooled two-proportion z-test of candidate − control (H0: equal proportions).

    The pooled SE is the SE under H0; the CI uses the unpooled SE instead
    (`Sample.binomial_mean_variance`). Same as statsmodels `proportions_ztest` and R's
    `prop.test(correct=FALSE)` (whose X² is z²).
    """
    n = control.n + candidate.n
    pooled = (control.sum + candidate.sum) / n
    var = pooled * (1 - pooled) * (1 / control.n + 1 / candidate.n)
    return z_test(candidate.mean - control.mean, var)


def welch_t(control: Sample, candidate: Sample) -> TestResult:
    """Welch's unequal-variance t-test with Welch–Satterthwaite degrees of freedom."""
    v_control, v_candidate = control.mean_variance, candidate.mean_variance
    var = v_control + v_candidate
    if not var > 0:
        return TestResult(math.nan, math.nan, math.nan)
    df = welch_df(v_control, control.n, v_candidate, candidate.n)
    t = (candidate.mean - control.mean) / math.sqrt(var)
    return TestResult(t, 2 * float(sps.t.sf(abs(t), df)), df)


def welch_df(v_control: float, n_control: float, v_candidate: float, n_candidate: float) -> float:
    """Welch–Satterthwaite df from the variances of the two means."""
    den = v_control**2 / (n_control - 1) + v_candidate**2 / (n_candidate - 1)
    return (v_control + v_candidate) ** 2 / den


def z_test(difference: float, variance: float) -> TestResult:
    """Two-sided z-test of `difference` against 0, given its variance; NaN if variance <= 0."""
    if not variance > 0:
        return TestResult(math.nan, math.nan)
    z = difference / math.sqrt(variance)
    return TestResult(z, 2 * float(sps.norm.sf(abs(z))))


def t_test(difference: float, variance: float, df: float) -> TestResult:
    """Two-sided t-test of `difference` against 0 with `df` degrees of freedom (z when df is infinite)."""
    if not math.isfinite(df):
        return z_test(difference, variance)
    if not variance > 0:
        return TestResult(math.nan, math.nan, df)
    t = difference / math.sqrt(variance)
    return TestResult(t, 2 * float(sps.t.sf(abs(t), df)), df)


def ratio_df(pairs: Sequence[tuple[Sample, Sample]]) -> float:
    """Degrees of freedom for a ratio metric's delta-method test: the smaller arm's effective units − 1.

    The effective units are Kish's (Σn_u)²/Σn_u² of the arm's denominators over the strata
    (`Sample.effective_denominator_units`). With heavy-tailed exposures per unit (lognormal
    σ = 2, Pareto(1.1)) a few units carry the denominator and the normal quantile
    undercovers (86–91%); the t quantile at these df restores 94–96% (issue 18, finding 5;
    docs/statistics.md). Infinite (the z quantile) for mean metrics.
    """
    if not pairs or not pairs[0][0].is_ratio:
        return math.inf
    arms = [sum((p[i] for p in pairs), Sample.empty(ratio=True)) for i in (0, 1)]
    effective = min(arm.effective_denominator_units for arm in arms)
    return max(effective - 1.0, 1.0) if math.isfinite(effective) else math.inf


def chi_square_abn(samples: Sequence[Sample]) -> float:
    """p of Pearson's chi-square test of equal proportions over k binary arms (no Yates).

    Same as scipy `chi2_contingency(table, correction=False)` and R's `prop.test(x, n)` for
    k > 2. NaN when an arm is empty or no arm (or every arm) converted.
    """
    table = np.array([[s.sum, s.n - s.sum] for s in samples], dtype=float)
    if len(samples) < 2 or not table.sum() > 0:
        return math.nan
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    if not np.all(expected > 0):
        return math.nan
    statistic = float(((table - expected) ** 2 / expected).sum())
    return float(sps.chi2.sf(statistic, df=len(samples) - 1))
