"""Builders shared by the statistics tests: Samples from raw unit-level data."""

from __future__ import annotations

import numpy as np

from analysis.stats.sample import Sample


def mean_sample(x: np.ndarray) -> Sample:
    x = np.asarray(x, dtype=float)
    return Sample(n=float(len(x)), sum=float(x.sum()), sum_sq=float((x**2).sum()))


def ratio_sample(x: np.ndarray, d: np.ndarray) -> Sample:
    x, d = np.asarray(x, dtype=float), np.asarray(d, dtype=float)
    return Sample(n=float(len(x)), sum=float(x.sum()), sum_sq=float((x**2).sum()),
                  den_sum=float(d.sum()), den_sum_sq=float((d**2).sum()), sum_products=float((x * d).sum()))
