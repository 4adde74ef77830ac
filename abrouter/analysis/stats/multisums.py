"""One arm's sums of a metric and k pre-exposure covariates: what regression adjustment needs (`regression`).

Pure data, mergeable with ``+`` like `Sample` (strata, shards, time windows). The router
stores one covariate per experiment (`Sample.cov_sum`, ...); a summary export
(``--summary``) may give k of them per metric and stratum (docs/analyzer.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MultiSums:
    """One arm's sums of a metric x and k covariates c (vectors and matrix as tuples, for hashing and JSON)."""

    n: float
    sum: float
    sum_sq: float
    #: Σc, one per covariate.
    cov_sum: tuple[float, ...]
    #: Σx·c, one per covariate.
    cov_products: tuple[float, ...]
    #: Σc·cᵀ, row by row (k × k, symmetric).
    cov_cross: tuple[tuple[float, ...], ...]

    @classmethod
    def from_units(cls, x: Sequence[float] | np.ndarray, c: Sequence[Sequence[float]] | np.ndarray) -> MultiSums:
        """The sums of per-unit values x (n) and covariates c (n × k)."""
        xa, ca = np.asarray(x, dtype=float), np.atleast_2d(np.asarray(c, dtype=float))
        if ca.shape[0] != xa.size:
            ca = ca.T
        return cls(
            n=float(xa.size),
            sum=float(xa.sum()),
            sum_sq=float(xa @ xa),
            cov_sum=tuple(ca.sum(axis=0).tolist()),
            cov_products=tuple((xa @ ca).tolist()),
            cov_cross=tuple(tuple(row) for row in (ca.T @ ca).tolist()),
        )

    @property
    def k(self) -> int:
        return len(self.cov_sum)

    def centred(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(S_xx, S_xc, S_cc): the sums of squares and products about the arm's means."""
        sc = np.asarray(self.cov_sum)
        s_xx = self.sum_sq - self.sum**2 / self.n
        s_xc = np.asarray(self.cov_products) - self.sum * sc / self.n
        s_cc = np.asarray(self.cov_cross) - np.outer(sc, sc) / self.n
        return s_xx, s_xc, s_cc

    @property
    def mean(self) -> float:
        return self.sum / self.n

    @property
    def cov_mean(self) -> np.ndarray:
        return np.asarray(self.cov_sum) / self.n

    def __add__(self, other: MultiSums) -> MultiSums:
        if self.k != other.k:
            raise ValueError(f"covariates: cannot add sums of {self.k} and {other.k} covariates")
        return MultiSums(
            n=self.n + other.n,
            sum=self.sum + other.sum,
            sum_sq=self.sum_sq + other.sum_sq,
            cov_sum=tuple(a + b for a, b in zip(self.cov_sum, other.cov_sum)),
            cov_products=tuple(a + b for a, b in zip(self.cov_products, other.cov_products)),
            cov_cross=tuple(tuple(a + b for a, b in zip(r, q)) for r, q in zip(self.cov_cross, other.cov_cross)),
        )
