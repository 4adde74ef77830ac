"""Pure statistics over sufficient statistics (numpy/scipy only; no I/O, no aiohttp/redis).

Modules, one noun each::

    sample          Sample: mergeable unit-level sums of one arm and metric
    estimate        the (stratified) difference estimate and its variances
    fixed_horizon   two-proportion z, Welch t, z, chi-square A/B/n
    sequential      normal-mixture mSPRT p-value and confidence sequence
    bayes           chance to beat and expected loss (Gaussian, exact Beta-Binomial)
    compare         Comparison / compare(): everything for one (variant, metric)
    noninferiority  NonInferiority / non_inferiority(): guardrails
    srm             SrmResult / srm_check(): sample-ratio mismatch
    multiple        holm(), benjamini_hochberg(), adjust()
    quantile        QuantileDifference / difference(): a latency quantile's difference from histograms
    bandit          thompson_weights()
    power           Plan / sample_size()
    reasons         reason codes for "insufficient_data"

Conventions are documented in docs/statistics.md. The classes and most functions are
re-exported here; `compare()` is not, because its name is taken by the module: use
``from analysis.stats.compare import Comparison, compare``.
"""

from abrouter.analysis.stats.bandit import thompson_weights
from abrouter.analysis.stats.bayes import beta_binomial_chance_to_beat, beta_binomial_expected_loss
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.stats.fixed_horizon import chi_square_abn
from abrouter.analysis.stats.multiple import holm
from abrouter.analysis.stats.noninferiority import NonInferiority, non_inferiority
from abrouter.analysis.stats.power import Plan, sample_size
from abrouter.analysis.stats.sample import Sample
from abrouter.analysis.stats.srm import SrmResult, srm_check

__all__ = [
    "Comparison",
    "NonInferiority",
    "Plan",
    "Sample",
    "SrmResult",
    "beta_binomial_chance_to_beat",
    "beta_binomial_expected_loss",
    "chi_square_abn",
    "holm",
    "non_inferiority",
    "sample_size",
    "srm_check",
    "thompson_weights",
]
