"""Sufficient statistics of one arm for one metric: the only input the statistics need.

A `Sample` holds unit-level sums (the unit is the unit of randomisation, a user), never raw
events, so an analysis costs the same at ten thousand and at ten billion events. Samples
are mergeable with `+` (and `sum()`), across Redis keys, time windows or weight epochs.

Two shapes:

- **mean metrics**: x_u per unit, the mean is Σx/n (binary: x_u ∈ {0, 1}; then `sum_sq`
  may be left out because x² = x);
- **ratio metrics** (`den_sum` given): per-request metrics such as latency or errors per
  request. The estimate is Σx_u / Σn_u over units and its variance comes from the delta
  method with the covariance term, because requests of one user are not independent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from numpy.typing import ArrayLike

from abrouter.analysis.stats.multisums import MultiSums

_RATIO_FIELDS = ("den_sum", "den_sum_sq", "sum_products")
_COVARIATE_FIELDS = ("cov_sum", "cov_sum_sq", "cov_products")  # [cuped]
_RATIO_COVARIATE_FIELDS = (*_COVARIATE_FIELDS, "den_cov_products")  # [cuped] a ratio's needs Σy·c too


@dataclass(frozen=True)
class Sample:
    """Unit-level sufficient statistics of one arm for one metric (one epoch stratum or pooled)."""

    #: Units (the unit of randomisation: users).
    n: float
    #: Σ x_u.
    sum: float
    #: Σ x_u². None means a binary metric, where Σx² = Σx.
    sum_sq: float | None = None
    #: Ratio metrics: Σ n_u, the denominator (e.g. requests per unit).
    den_sum: float | None = None
    #: Ratio metrics: Σ n_u².
    den_sum_sq: float | None = None
    #: Ratio metrics: Σ x_u n_u.
    sum_products: float | None = None
    #: [cuped] A pre-exposure covariate c_u: Σ c_u, Σ c_u², Σ x_u c_u
    #: (`abrouter.analysis.stats.cuped`). None: no covariate.
    cov_sum: float | None = None
    cov_sum_sq: float | None = None
    cov_products: float | None = None
    #: [cuped] Ratio metrics with a covariate: Σ y_u c_u of the denominator (None otherwise).
    den_cov_products: float | None = None
    #: [regression] Several pre-exposure covariates' sums (`regression`, from a summary
    #: export; mean metrics only). None: none; the single covariate above is the router's.
    covariates: MultiSums | None = None

    def __post_init__(self) -> None:
        # Negative counts or half-given ratio sums are bugs upstream, not bad luck.
        if not self.n >= 0:
            raise ValueError(f"n: must be >= 0, got {self.n}")
        given = [getattr(self, name) is not None for name in _RATIO_FIELDS]
        if any(given) and not all(given):
            raise ValueError(f"ratio metric: {', '.join(_RATIO_FIELDS)} must be given together")
        if self.is_ratio and self.sum_sq is None:
            raise ValueError("ratio metric: sum_sq is required")
        names = _RATIO_COVARIATE_FIELDS if self.is_ratio else _COVARIATE_FIELDS  # [cuped]
        given = [getattr(self, name) is not None for name in names]
        if (any(given) and not all(given)) or (not self.is_ratio and self.den_cov_products is not None):
            raise ValueError(f"covariate: {', '.join(names)} go together")
        if self.covariates is not None and (self.is_ratio or self.covariates.n != self.n):
            raise ValueError("covariates: mean metrics only, over the sample's n units")

    @classmethod
    def from_values(cls, values: ArrayLike, covariate: ArrayLike | None = None) -> Sample:
        """The sums of a mean metric from raw per-unit values (simulations, tests, exports).

        [cuped] `covariate`: the units' pre-exposure covariate c_u, aligned with `values`.
        """
        x = np.asarray(values, dtype=float)
        if covariate is None:
            return cls(n=float(x.size), sum=float(x.sum()), sum_sq=float((x**2).sum()))
        c = np.asarray(covariate, dtype=float)
        if c.shape != x.shape:
            raise ValueError(f"covariate: shape {c.shape} differs from the values' {x.shape}")
        return cls(
            n=float(x.size),
            sum=float(x.sum()),
            sum_sq=float((x**2).sum()),
            cov_sum=float(c.sum()),
            cov_sum_sq=float((c**2).sum()),
            cov_products=float((x * c).sum()),
        )

    @classmethod
    def from_ratio(cls, numerators: ArrayLike, denominators: ArrayLike, covariate: ArrayLike | None = None) -> Sample:
        """The sums of a ratio metric from raw per-unit numerators x_u and denominators n_u.

        [cuped] `covariate`: the units' pre-exposure covariate c_u, aligned with them.
        """
        x, d = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
        out = cls(
            n=float(x.size),
            sum=float(x.sum()),
            sum_sq=float((x**2).sum()),
            den_sum=float(d.sum()),
            den_sum_sq=float((d**2).sum()),
            sum_products=float((x * d).sum()),
        )
        if covariate is None:
            return out
        c = np.asarray(covariate, dtype=float)
        if c.shape != x.shape or d.shape != x.shape:
            raise ValueError(f"covariate: shape {c.shape} differs from the values' {x.shape}")
        return replace(
            out,
            cov_sum=float(c.sum()),
            cov_sum_sq=float((c**2).sum()),
            cov_products=float((x * c).sum()),
            den_cov_products=float((d * c).sum()),
        )

    @classmethod
    def empty(cls, *, ratio: bool = False) -> Sample:
        """No units: the neutral element of `+`, valid for every metric kind (Σx² = 0)."""
        if ratio:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return cls(0.0, 0.0, 0.0)

    def __add__(self, other: Sample) -> Sample:
        if not isinstance(other, Sample):
            return NotImplemented
        if self.is_ratio != other.is_ratio:
            raise ValueError("cannot add a ratio sample to a mean sample")
        both_binary = self.sum_sq is None and other.sum_sq is None
        return Sample(
            n=self.n + other.n,
            sum=self.sum + other.sum,
            sum_sq=None if both_binary else self.effective_sum_sq + other.effective_sum_sq,
            den_sum=_add(self.den_sum, other.den_sum),
            den_sum_sq=_add(self.den_sum_sq, other.den_sum_sq),
            sum_products=_add(self.sum_products, other.sum_products),
            cov_sum=_add(self.cov_sum, other.cov_sum),  # [cuped] None unless both have one
            cov_sum_sq=_add(self.cov_sum_sq, other.cov_sum_sq),
            cov_products=_add(self.cov_products, other.cov_products),
            den_cov_products=_add(self.den_cov_products, other.den_cov_products),
            covariates=self.covariates + other.covariates if self.covariates and other.covariates else None,
        )

    def __radd__(self, other: object) -> Sample:
        # Lets the builtin sum() start from 0.
        if other == 0:
            return self
        return NotImplemented

    @property
    def is_ratio(self) -> bool:
        return self.den_sum is not None

    @property
    def effective_denominator_units(self) -> float:
        """Ratio metrics: Kish's effective number of units of the denominator, (Σn_u)² / Σn_u².

        n when every unit has the same exposures; far fewer when a few units hold most of
        them (heavy-tailed exposures), which is when the delta method's normal
        approximation is poor. NaN for a mean metric or an empty sample.
        """
        if self.den_sum is None or not self.den_sum_sq:
            return math.nan
        return self.den_sum**2 / self.den_sum_sq

    @property
    def has_covariate(self) -> bool:
        """[cuped] Whether the sample carries its covariate's sums."""
        return self.cov_sum is not None

    @property
    def effective_sum_sq(self) -> float:
        """Σx², taking Σx for a binary sample that left it out."""
        return self.sum if self.sum_sq is None else self.sum_sq

    @property
    def mean(self) -> float:
        """Σx/n, or Σx/Σn_u for a ratio metric; NaN without units."""
        den = self.den_sum if self.is_ratio else self.n
        return self.sum / den if den else math.nan

    @property
    def variance(self) -> float:
        """Unit-level sample variance of x (ddof = 1); NaN when n <= 1."""
        return _variance(self.n, self.sum, self.effective_sum_sq)

    @property
    def mean_variance(self) -> float:
        """Variance of the mean estimator; NaN when undefined (n <= 1, zero denominator).

        Mean metrics: s²/n. Ratio metrics, R = Σx/Σn_u, by the delta method:
        (s²_x − 2R·s_xn + R²·s²_n) / (n · n̄²), with unit-level (co)variances (ddof = 1).
        """
        if self.n <= 1:
            return math.nan
        if not self.is_ratio:
            return self.variance / self.n
        if not self.den_sum:
            return math.nan
        ratio = self.mean
        var_x = self.variance
        assert self.den_sum_sq is not None and self.sum_products is not None  # all three or none (__post_init__)
        var_d = _variance(self.n, self.den_sum, self.den_sum_sq)
        cov = _covariance(self.n, self.sum, self.den_sum, self.sum_products)
        den_mean = self.den_sum / self.n
        value = (var_x - 2 * ratio * cov + ratio**2 * var_d) / (self.n * den_mean**2)
        # Rounding can push an exact zero slightly below it.
        return max(value, 0.0)

    @property
    def binomial_mean_variance(self) -> float:
        """p(1 − p)/n, the unpooled variance of a proportion used by the z-test CI."""
        if self.n <= 0:
            return math.nan
        p = self.sum / self.n
        return max(p * (1 - p), 0.0) / self.n

    def to_dict(self) -> dict[str, float]:
        """The given fields, by name (None fields left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return out | ({"covariates": asdict(self.covariates)} if self.covariates is not None else {})


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _covariance(n: float, sum_a: float, sum_b: float, sum_ab: float) -> float:
    """Unit-level sample covariance (ddof = 1) from sums; NaN when n <= 1."""
    if n <= 1:
        return math.nan
    return (sum_ab - sum_a * sum_b / n) / (n - 1)


def _variance(n: float, sum_a: float, sum_sq: float) -> float:
    # Σx² − (Σx)²/n cancels badly; rounding can leave a true zero slightly negative.
    value = _covariance(n, sum_a, sum_a, sum_sq)
    return max(value, 0.0) if value == value else value
