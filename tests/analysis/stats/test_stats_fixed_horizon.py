import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import proportions_ztest

from abrouter.analysis.stats import fixed_horizon
from abrouter.analysis.stats.sample import Sample

# R's datasets::sleep, the example of ?t.test.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


@pytest.mark.parametrize("counts", [(50, 1000, 65, 1000), (83, 86, 90, 93), (3, 40, 0, 55), (480, 9000, 530, 9100)])
def test_two_proportion_z_matches_statsmodels(counts: tuple[int, int, int, int]) -> None:
    s_c, n_c, s_t, n_t = counts
    result = fixed_horizon.two_proportion_z(Sample(n_c, s_c), Sample(n_t, s_t))
    z, p = proportions_ztest([s_t, s_c], [n_t, n_c])
    assert result.statistic == pytest.approx(z, abs=1e-9)
    assert result.p_value == pytest.approx(p, abs=1e-9)


def test_two_proportion_z_matches_r_prop_test() -> None:
    # prop.test(c(83, 90), c(86, 93), correct = FALSE): X-squared = 0.0095085, p = 0.9223
    # (X² = z²; the reference digits computed with scipy's chi2_contingency, since R prints 4).
    result = fixed_horizon.two_proportion_z(Sample(86, 83), Sample(93, 90))
    assert result.statistic**2 == pytest.approx(0.009508518748184158, abs=1e-9)
    assert result.p_value == pytest.approx(0.9223200957342685, abs=1e-9)
    assert result.p_value == pytest.approx(0.9223, abs=5e-5)


def test_welch_matches_r_sleep_example() -> None:
    # t.test(extra ~ group, data = sleep): t = -1.8608, df = 17.776, p-value = 0.07939.
    result = fixed_horizon.welch_t(Sample.from_values(SLEEP_1), Sample.from_values(SLEEP_2))
    assert result.statistic == pytest.approx(1.8608, abs=5e-5)  # candidate − control: sign flips
    assert result.df == pytest.approx(17.776, abs=5e-4)
    assert result.p_value == pytest.approx(0.07939, abs=5e-6)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_matches_scipy_ttest_ind_from_stats(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(10, 3, size=37), rng.normal(11, 5, size=81)
    result = fixed_horizon.welch_t(Sample.from_values(a), Sample.from_values(b))
    ref = sps.ttest_ind_from_stats(b.mean(), b.std(ddof=1), len(b), a.mean(), a.std(ddof=1), len(a), equal_var=False)
    assert result.statistic == pytest.approx(ref.statistic, abs=1e-9)
    assert result.p_value == pytest.approx(ref.pvalue, abs=1e-9)


def test_chi_square_abn_matches_r_smokers_and_scipy() -> None:
    # ?prop.test: smokers <- c(83, 90, 129, 70); patients <- c(86, 93, 136, 82)
    # prop.test(smokers, patients): X-squared = 12.6, df = 3, p-value = 0.005585
    smokers, patients = [83, 90, 129, 70], [86, 93, 136, 82]
    p = fixed_horizon.chi_square_abn([Sample(n, s) for s, n in zip(smokers, patients)])
    table = np.array([[s, n - s] for s, n in zip(smokers, patients)])
    assert p == pytest.approx(sps.chi2_contingency(table, correction=False)[1], abs=1e-12)
    assert p == pytest.approx(0.005585, abs=5e-7)


def test_chi_square_two_arms_is_the_squared_pooled_z() -> None:
    arms = [Sample(1000, 50), Sample(1000, 70)]
    assert fixed_horizon.chi_square_abn(arms) == pytest.approx(fixed_horizon.two_proportion_z(*arms).p_value, abs=1e-12)


def test_degenerate_tests_are_nan() -> None:
    assert np.isnan(fixed_horizon.chi_square_abn([Sample(10, 0), Sample(10, 0)]))
    assert np.isnan(fixed_horizon.chi_square_abn([Sample(0, 0), Sample(10, 3)]))
    assert np.isnan(fixed_horizon.welch_t(Sample(5, 10, 20), Sample(5, 10, 20)).p_value)
    assert np.isnan(fixed_horizon.z_test(1.0, 0.0).p_value)


def test_chi_square_abn_on_all_empty_arms_is_nan_without_a_warning() -> None:
    # pytest turns warnings into errors: 0/0 used to raise a numpy RuntimeWarning here.
    assert np.isnan(fixed_horizon.chi_square_abn([Sample(0, 0), Sample(0, 0), Sample(0, 0)]))
