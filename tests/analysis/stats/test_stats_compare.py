import json
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from abrouter.analysis.stats import bayes, estimate, reasons, sequential
from abrouter.analysis.stats.compare import FRESH, Comparison, Running, compare
from abrouter.analysis.stats.sample import Sample

SETTINGS = dict(alpha=0.05, expected_units=10_000, variant="candidate", metric="m")


def _binary(control: Sample | list[Sample], candidate: Sample | list[Sample], **kw: object) -> Comparison:
    return compare(control, candidate, **{"kind": "binary", "direction": "increase", **SETTINGS, **kw})


def test_binary_matches_statsmodels_z_and_wald_interval() -> None:
    result = _binary(Sample(1000, 50), Sample(1000, 65))
    _, p = proportions_ztest([65, 50], [1000, 1000])
    lo, hi = confint_proportions_2indep(65, 1000, 50, 1000, method="wald", compare="diff")
    assert result.status == "ok" and result.bayes_method == "beta_binomial"
    assert result.p_value == pytest.approx(p, abs=1e-9)
    assert result.absolute_ci == pytest.approx((lo, hi), abs=1e-9)
    assert result.absolute_lift == pytest.approx(0.015) and result.relative_lift == pytest.approx(0.3)
    assert result.chance_to_beat == bayes.beta_binomial_chance_to_beat(Sample(1000, 50), Sample(1000, 65))


def test_continuous_matches_scipy_welch_test_and_interval() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.gamma(2.0, 5.0, size=400), rng.gamma(2.0, 5.5, size=380)
    result = compare(Sample.from_values(a), Sample.from_values(b), kind="continuous", direction="increase", **SETTINGS)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert result.p_value == pytest.approx(ref.pvalue, abs=1e-9)
    assert result.absolute_ci == pytest.approx(tuple(ref.confidence_interval(0.95)), abs=1e-9)
    assert result.bayes_method == "gaussian"


def test_relative_interval_uses_the_control_variance_too() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(10, 4, size=200), rng.normal(11, 4, size=200)
    result = compare(Sample.from_values(a), Sample.from_values(b), kind="continuous", direction="increase", **SETTINGS)
    var_a, var_b = a.var(ddof=1) / 200, b.var(ddof=1) / 200
    only_candidate = math.sqrt(var_b) / a.mean()
    with_control = math.sqrt(var_b / a.mean() ** 2 + b.mean() ** 2 * var_a / a.mean() ** 4)
    half = (result.relative_ci[1] - result.relative_ci[0]) / 2
    assert half == pytest.approx(1.959964 * with_control, rel=1e-6)
    assert half > 1.3 * 1.959964 * only_candidate


def test_ratio_metric_uses_the_delta_method_with_t_at_the_effective_units() -> None:
    rng = np.random.default_rng(5)
    d_c, d_t = rng.poisson(3, 800) + 1, rng.poisson(3, 800) + 1
    x_c, x_t = rng.gamma(2, 50, 800) * d_c, rng.gamma(2, 45, 800) * d_t
    result = compare(
        Sample.from_ratio(x_c, d_c), Sample.from_ratio(x_t, d_t), kind="continuous", direction="decrease", **SETTINGS
    )

    def delta(x: np.ndarray, d: np.ndarray) -> float:
        grad = np.array([1 / d.mean(), -x.mean() / d.mean() ** 2])
        return float(grad @ (np.cov(np.vstack([x, d])) / len(x)) @ grad)

    diff = x_t.sum() / d_t.sum() - x_c.sum() / d_c.sum()
    z = diff / math.sqrt(delta(x_c, d_c) + delta(x_t, d_t))
    # Issue 18, finding 5: t with df = the smaller arm's Kish effective units of the denominator − 1.
    df = min(d.sum() ** 2 / (d**2).sum() for d in (d_c, d_t)) - 1
    assert result.p_value == pytest.approx(2 * sps.t.sf(abs(z), df), rel=1e-9)
    half = (result.absolute_ci[1] - result.absolute_ci[0]) / 2
    assert half == pytest.approx(sps.t.isf(0.025, df) * abs(diff / z), rel=1e-9)
    # Lower latency is better and the candidate is lower: more likely better than not.
    assert diff < 0 and result.chance_to_beat > 0.5


def test_direction_decrease_mirrors_the_bayesian_numbers() -> None:
    up = _binary(Sample(5000, 250), Sample(5000, 270))
    down = _binary(Sample(5000, 250), Sample(5000, 270), direction="decrease")
    assert up.chance_to_beat + down.chance_to_beat == pytest.approx(1.0, abs=1e-9)
    assert down.expected_loss > up.expected_loss >= 0
    assert up.p_value == down.p_value and up.sequential_p_value == down.sequential_p_value


def test_sequential_interval_inverts_the_sequential_p_and_is_wider() -> None:
    for count in (50, 60, 70, 80, 95):
        result = _binary(Sample(2000, 50), Sample(2000, count))
        lo, hi = result.sequential_ci_absolute
        assert (lo > 0) == (result.sequential_p_value < 0.05)
        assert lo < result.absolute_ci[0] and hi > result.absolute_ci[1]
        assert result.sequential_ci[0] < result.relative_ci[0]


def test_sequential_p_is_a_running_minimum() -> None:
    fresh = _binary(Sample(2000, 50), Sample(2000, 55))
    assert fresh.sequential_p_value > 0.2
    assert fresh.sequential_p_worse == 1.0 and fresh.sequential_p_better == fresh.sequential_p_value
    later = _binary(Sample(2000, 50), Sample(2000, 55), previous=Running(0.03, 0.2))
    assert (later.sequential_p_better, later.sequential_p_worse, later.sequential_p_value) == (0.03, 0.2, 0.03)


def test_confidence_sequences_are_intersected_over_looks() -> None:
    alone = _binary(Sample(2000, 100), Sample(2000, 130))
    lo, hi = alone.sequential_ci_absolute
    later = _binary(
        Sample(2000, 100),
        Sample(2000, 130),
        previous=Running(ci_absolute=(lo + 0.001, hi + 1), ci_relative=(-5.0, 0.1)),
    )
    assert later.sequential_ci_absolute == (lo + 0.001, hi)
    assert later.sequential_ci == (alone.sequential_ci[0], 0.1)
    # An empty intersection (the effect moved more than a constant one can): this look alone.
    moved = _binary(Sample(2000, 100), Sample(2000, 130), previous=Running(ci_absolute=(hi + 0.01, hi + 0.02)))
    assert moved.sequential_ci_absolute == alone.sequential_ci_absolute
    # A look that learns nothing reports what the earlier ones knew.
    empty = _binary(Sample(0, 0), Sample(100, 5), previous=later.running())
    assert (empty.status, empty.sequential_ci_absolute, empty.sequential_ci) == (
        "insufficient_data",
        later.sequential_ci_absolute,
        later.sequential_ci,
    )


def test_the_running_p_and_the_intersected_sequence_agree_at_every_look() -> None:
    # p < alpha at some look  <=>  that look's sequence excluded 0  <=>  the intersection does.
    rng = np.random.default_rng(17)
    agreed = significant = 0
    for _ in range(40):
        previous = FRESH
        conversions = rng.binomial(400, (0.05, 0.065), size=(20, 2)).cumsum(axis=0)
        for look in range(20):
            n = 400 * (look + 1)
            c = _binary(
                Sample(n, float(conversions[look, 0])), Sample(n, float(conversions[look, 1])), previous=previous
            )
            previous = c.running()
            lo, hi = c.sequential_ci_absolute
            agreed += (c.sequential_p_value < 0.05) == (not lo <= 0 <= hi)
            significant += c.sequential_p_value < 0.05
    assert agreed == 40 * 20 and significant > 100


def test_a_sign_flip_after_a_significant_win_is_not_significant_harm() -> None:
    # The candidate was significantly better at an earlier look; now it is slightly below.
    # A single two-sided running minimum reported that old 0.001 as harm.
    now = _binary(Sample(20_000, 1000), Sample(20_000, 990), previous=Running(0.001, 1.0))
    assert now.absolute_lift < 0
    assert now.sequential_p_better == 0.001
    assert now.sequential_p_worse >= 0.05
    assert now.sequential_p_value == 0.001  # min of both, kept for display


def test_better_and_worse_respect_the_direction() -> None:
    # Candidate clearly higher: better for "increase", worse for "decrease".
    up = _binary(Sample(5000, 250), Sample(5000, 350))
    down = _binary(Sample(5000, 250), Sample(5000, 350), direction="decrease")
    assert up.sequential_p_better < 0.05 and up.sequential_p_worse == 1.0
    assert down.sequential_p_worse == up.sequential_p_better and down.sequential_p_better == 1.0


def test_a_zero_variance_arm_does_not_fire_the_sequential_test() -> None:
    # 0 of 50 candidate conversions has a Wald variance of 0; the sequential p used to be 0.0009.
    result = _binary(Sample(950, 48), Sample(50, 0))
    assert result.status == "ok"
    assert result.sequential_p_value >= 0.05 and result.sequential_p_worse >= 0.05
    lo, hi = result.sequential_ci_absolute
    assert lo < 0 < hi
    # The fixed-horizon test is still exactly the pooled two-proportion z.
    assert result.p_value == pytest.approx(proportions_ztest([0, 48], [50, 950])[1], abs=1e-12)


def test_tau_squared_is_the_same_at_every_look_whatever_the_split() -> None:
    # τ² = V·r must not depend on the look or the split: V ∝ 1/n_c + 1/n_t, so the clock
    # must be the harmonic 2·n_c·n_t/(n_c + n_t), not the mean (n_c + n_t)/2.
    def tau2(n_control: float, n_candidate: float) -> float:
        est = estimate.combine(
            [Sample(n_control, 0.05 * n_control)],
            [Sample(n_candidate, 0.05 * n_candidate)],
            estimate.arm_variance("binary"),
        )
        return est.variance * float(sequential.mixing_ratio(est.units_per_arm, 10_000, 0.05))

    reference = tau2(950, 950)  # 50/50 with the information of 9,500/500
    for scale in (1, 2, 5, 20):
        assert tau2(9500 * scale, 500 * scale) == pytest.approx(reference, rel=1e-9)
        assert tau2(200 * scale, 3800 * scale) == pytest.approx(reference, rel=1e-9)
    # With several strata the clock adds up per stratum, like the information does.
    two = estimate.combine(
        [Sample(9500, 475), Sample(2500, 125)], [Sample(500, 25), Sample(2500, 125)], estimate.arm_variance("binary")
    )
    assert two.variance * float(sequential.mixing_ratio(two.units_per_arm, 10_000, 0.05)) == pytest.approx(
        reference, rel=1e-9
    )


def test_zero_baseline_keeps_the_absolute_test() -> None:
    # Defects (lower is better): none in the control, 60 of 2,000 in the candidate. Only the
    # relative lift is undefined; the harm is plain.
    result = _binary(Sample(2000, 0), Sample(2000, 60), direction="decrease")
    assert (result.status, result.reason) == ("ok", reasons.ZERO_BASELINE)
    assert result.absolute_lift == pytest.approx(0.03) and result.absolute_ci[0] > 0
    assert result.sequential_p_worse < 0.05 and result.sequential_p_better == 1.0
    assert result.p_value < 1e-10
    assert math.isnan(result.relative_lift)
    assert all(math.isnan(x) for x in result.relative_ci + result.sequential_ci)
    assert result.sequential_ci_absolute[0] > 0
    json.dumps(result.to_dict(), allow_nan=False)


def test_single_stratum_list_equals_the_sample_and_degenerate_strata_are_skipped() -> None:
    alone = _binary(Sample(3000, 150), Sample(3000, 180))
    assert _binary([Sample(3000, 150)], [Sample(3000, 180)]) == alone
    with_degenerate = _binary([Sample(3000, 150), Sample(1, 1)], [Sample(3000, 180), Sample(40, 3)])
    assert with_degenerate == alone


def test_strata_are_combined_with_weights_from_sizes_and_pooled_arm_variances() -> None:
    controls = [Sample(4000, 400), Sample(1000, 30)]
    candidates = [Sample(1000, 110), Sample(4000, 130)]
    result = _binary(controls, candidates)
    n_c = np.array([4000, 1000])
    n_t = np.array([1000, 4000])
    p_c = np.array([0.1, 0.03])
    p_t = np.array([0.11, 0.0325])
    pooled_c, pooled_t = 430 / 5000, 240 / 5000
    w = 1 / (pooled_c * (1 - pooled_c) / n_c + pooled_t * (1 - pooled_t) / n_t)
    expected = np.sum(w * (p_t - p_c)) / w.sum()
    variance = np.sum(w**2 * (p_c * (1 - p_c) / n_c + p_t * (1 - p_t) / n_t)) / w.sum() ** 2
    assert result.strata == 2 and result.bayes_method == "gaussian"
    assert result.absolute_lift == pytest.approx(expected, rel=1e-12)
    assert result.p_value == pytest.approx(2 * sps.norm.sf(expected / math.sqrt(variance)), rel=1e-9)


def test_epoch_weights_do_not_bias_rare_binary_outcomes() -> None:
    # Bandit-like data: ten epochs of 200-800 units per arm, 1% vs 1.2%. Weights from each
    # stratum's own p̂(1 − p̂) favour strata where the candidate did badly: that gave a
    # difference 13% too small and a variance 15% too small (6.5 and 5 standard errors).
    rng = np.random.default_rng(7)
    p_c, p_t, reps = 0.01, 0.012, 3000
    differences, variances = [], []
    for _ in range(reps):
        sizes = rng.integers(200, 800, size=(2, 10))
        controls = [Sample(int(n), float(rng.binomial(n, p_c))) for n in sizes[0]]
        candidates = [Sample(int(n), float(rng.binomial(n, p_t))) for n in sizes[1]]
        est = estimate.combine(controls, candidates, estimate.arm_variance("binary"))
        differences.append(est.difference)
        variances.append(est.variance)
    d = np.array(differences)
    assert abs(d.mean() - (p_t - p_c)) < 3 * d.std() / math.sqrt(reps)
    # The reported variance matches the spread of the estimates (SE of a variance ≈ √(2/n) = 2.6%).
    assert np.mean(variances) == pytest.approx(d.var(), rel=0.08)


def test_simpsons_paradox_pooling_flips_the_sign_and_stratifying_does_not() -> None:
    # Epoch 1: 90/10 split at a high base rate; epoch 2: 10/90 at a low base rate. The
    # candidate is 10% better in both epochs, but its traffic is mostly in the low epoch.
    rng = np.random.default_rng(2024)
    arms = {"control": [(18_000, 0.10), (2_000, 0.02)], "candidate": [(2_000, 0.11), (18_000, 0.022)]}
    strata = {arm: [Sample(n, float(rng.binomial(n, p))) for n, p in cells] for arm, cells in arms.items()}
    pooled = _binary(sum(strata["control"]), sum(strata["candidate"]))
    stratified = _binary(strata["control"], strata["candidate"])
    assert pooled.absolute_lift < 0 and pooled.p_value < 1e-6
    assert stratified.absolute_lift > 0
    assert stratified.relative_ci[0] < 0.10 < stratified.relative_ci[1]


@pytest.mark.parametrize(
    ("control", "candidate", "reason"),
    [
        (Sample(0, 0), Sample(100, 5), reasons.EMPTY_ARM),
        (Sample(1, 1), Sample(100, 5), reasons.N_TOO_SMALL),
        (Sample(100, 0), Sample(100, 0), reasons.ZERO_VARIANCE),
        (Sample(100, 100), Sample(100, 100), reasons.ZERO_VARIANCE),
        (Sample.empty(ratio=True), Sample.from_ratio(np.ones(5), np.ones(5)), reasons.EMPTY_ARM),
        (Sample(10, 0, 0, 0, 0, 0), Sample.from_ratio(np.ones(5), np.ones(5)), reasons.EMPTY_ARM),
    ],
)
def test_degenerate_data_is_an_insufficient_result(control: Sample, candidate: Sample, reason: str) -> None:
    result = _binary(control, candidate, previous=Running(0.4, 0.6))
    assert (result.status, result.reason) == ("insufficient_data", reason)
    assert (result.sequential_p_better, result.sequential_p_worse, result.sequential_p_value) == (0.4, 0.6, 0.4)
    json.dumps(result.to_dict(), allow_nan=False)


def test_continuous_zero_variance_and_strata_all_tiny() -> None:
    flat = compare(Sample(50, 100, 200), Sample(50, 100, 200), kind="continuous", direction="increase", **SETTINGS)
    assert flat.reason == reasons.ZERO_VARIANCE
    tiny = _binary([Sample(1, 0), Sample(1, 1)], [Sample(1, 1), Sample(1, 0)])
    assert tiny.reason == reasons.N_TOO_SMALL


def test_to_dict_is_json_safe_with_lists() -> None:
    data = _binary(Sample(1000, 50), Sample(1000, 65)).to_dict()
    assert json.loads(json.dumps(data, allow_nan=False))["absolute_ci"] == list(data["absolute_ci"])
    assert set(data) >= {"variant", "metric", "p_value", "sequential_p_value", "sequential_ci", "chance_to_beat"}


@pytest.mark.parametrize(
    ("control", "candidate", "kind"),
    [
        ([Sample(10, 1)], [Sample(10, 1), Sample(10, 2)], "binary"),
        ([], [], "binary"),
        (Sample(10, 11), Sample(10, 1), "binary"),
        (Sample(10, 11), Sample(10, 1), "continuous"),
        (Sample(10, 1), Sample(10, 1), "counts"),
    ],
)
def test_inputs_that_are_bugs_raise(control: object, candidate: object, kind: str) -> None:
    with pytest.raises(ValueError):
        compare(control, candidate, kind=kind, direction="increase", **SETTINGS)  # type: ignore[arg-type]
