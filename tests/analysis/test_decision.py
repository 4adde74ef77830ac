"""The decision policy, branch by branch, on constructed evidence (no statistics run)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from abrouter.analysis import analyzer, decision
from abrouter.analysis import data as d
from abrouter.analysis import weights as weight_math
from abrouter.analysis.evidence import Evidence
from abrouter.analysis.stats.compare import FRESH, Comparison, Running
from abrouter.analysis.stats.noninferiority import NonInferiority
from abrouter.analysis.stats.sample import Sample
from abrouter.analysis.stats.srm import SrmResult
from abrouter.contract.experiment import AnalysisSettings, Bandit, Metric

DAY = 86400.0
NOW = 1_700_000_000.0
CONVERSION = Metric(name="conversion", kind="binary", direction="increase")


def experiment(
    weights: dict[str, float],
    *,
    units: int = 1000,
    current_units: int | None = None,
    settings: AnalysisSettings | None = None,
    metrics: tuple[Metric, ...] = (CONVERSION,),
    started_at: float | None = NOW - 7 * DAY,  # the default burn-in (a week) has just passed
    rate: dict[str, float] | None = None,
) -> d.ExperimentData:
    """Two epochs: units/2 per arm in each unless `current_units` sets the second epoch's."""
    first = units - (current_units if current_units is not None else units // 2)
    second = units - first
    rate = rate or {}

    def stratum(epoch: int, name: str, n: int) -> d.Stratum:
        conversions = round(n * rate.get(name, 0.1))
        return d.Stratum(epoch=epoch, units=n, metrics={"conversion": Sample(n, conversions)})

    arms = tuple(
        d.Arm(name=name, weight=w, strata=(stratum(1, name, first), stratum(2, name, second)))
        for name, w in weights.items()
    )
    epochs = (d.Epoch(1, dict(weights), NOW - DAY), d.Epoch(2, dict(weights), NOW - DAY / 2))
    return d.ExperimentData(
        name="exp",
        metrics=metrics,
        arms=arms,
        epochs=epochs,
        settings=settings or AnalysisSettings(),
        started_at=started_at,
    )


def comparison(
    variant: str = "candidate",
    *,
    lift: float = 0.01,
    seq_p: float = 0.5,
    status: str = "ok",
    metric: str = "conversion",
    better: float | None = None,
    worse: float | None = None,
    good: bool | None = None,
) -> Comparison:
    """`seq_p` is the p in the direction the lift points (`good`: the lift is in the metric's
    good direction; by default, for an increase metric, lift > 0), both the running minimum
    and this look's; the other direction's is 1 unless `better` / `worse` say otherwise."""
    good = lift > 0 if good is None else good
    if better is None:
        better = seq_p if good else 1.0
    if worse is None:
        worse = 1.0 if good else seq_p
    return Comparison(
        variant=variant,
        metric=metric,
        status=status,
        reason=None if status == "ok" else "n_too_small",
        n_control=1000,
        n=1000,
        control_mean=0.1,
        mean=0.1 + lift,
        absolute_lift=lift,
        absolute_ci=(lift - 0.01, lift + 0.01),
        relative_lift=lift / 0.1,
        relative_ci=(lift / 0.1 - 0.1, lift / 0.1 + 0.1),
        p_value=seq_p / 3,
        sequential_p_value=seq_p,
        sequential_ci=(lift / 0.1 - 0.2, lift / 0.1 + 0.2),
        sequential_ci_absolute=(lift - 0.02, lift + 0.02),
        chance_to_beat=0.9,
        expected_loss=0.001,
        sequential_p_better=better,
        sequential_p_worse=worse,
        p_better_now=better,
        p_worse_now=worse,
    )


def rail(
    variant: str = "candidate", *, status: str = "pass", metric: str = "errors", harm: float = 0.0
) -> NonInferiority:
    return NonInferiority(
        metric=metric,
        variant=variant,
        status=status,
        reason=None,
        margin=0.01,
        relative=False,
        harm=harm,
        bound=harm + 0.005,
        p_value=0.01,
        lower_bound=harm - 0.005,
    )


def srm(flagged: bool = False) -> SrmResult:
    return SrmResult(p_value=1e-6 if flagged else 0.5, flagged=flagged, observed={}, expected={})


def evidence(
    *comparisons: Comparison, guardrails: tuple[NonInferiority, ...] | None = None, flagged: bool = False
) -> Evidence:
    if guardrails is None:
        guardrails = tuple(rail(c.variant) for c in comparisons)
    return Evidence(comparisons=comparisons, guardrails=guardrails, srm=srm(flagged))


AB_50 = {"control": 50.0, "candidate": 50.0}


# ------------------------------------------------------------------ finished


def test_no_candidate_traffic_is_a_stop_that_keeps_the_weights() -> None:
    data = experiment({"control": 100.0, "candidate": 0.0})
    got = decision.decide(data, evidence(comparison(seq_p=0.001)), now=NOW)
    assert got.action == "stop"
    assert got.weights == {"control": 100.0, "candidate": 0.0}


def test_a_candidate_with_all_traffic_stays_promoted() -> None:
    data = experiment({"control": 0.0, "candidate": 100.0})
    got = decision.decide(data, evidence(comparison(seq_p=0.001)), now=NOW)
    assert (got.action, got.weights) == ("promote", {"control": 0.0, "candidate": 100.0})
    assert "already" in got.reason


def test_all_traffic_without_a_win_is_a_stop_not_a_promotion() -> None:
    # A hand edit (or an old bandit with floor 0) put the candidate at 100%; nothing won.
    data = experiment({"control": 0.0, "candidate": 100.0})
    got = decision.decide(data, evidence(comparison(seq_p=0.5)), now=NOW)
    assert (got.action, got.weights) == ("stop", {"control": 0.0, "candidate": 100.0})
    assert "candidate has 100% of traffic but was not promoted by the policy" in got.reason


def test_all_traffic_on_a_harmful_candidate_rolls_back() -> None:
    data = experiment({"control": 0.0, "candidate": 100.0})
    got = decision.decide(data, evidence(comparison(lift=-0.02, seq_p=0.001)), now=NOW)
    assert (got.action, got.weights) == ("rollback", {"control": 100.0, "candidate": 0.0})


# ------------------------------------------------------------------ rollback


def test_guardrail_breach_rolls_back() -> None:
    ev = evidence(comparison(seq_p=0.001), guardrails=(rail(status="breach", harm=0.05),))
    got = decision.decide(experiment(AB_50), ev, now=NOW)
    assert got.action == "rollback"
    assert got.weights == {"control": 100.0, "candidate": 0.0}
    assert "guardrail errors breached: harm +0.05, lower bound +0.045 > margin 0.01" in got.reason


def test_significant_harm_on_the_primary_rolls_back() -> None:
    got = decision.decide(experiment(AB_50), evidence(comparison(lift=-0.02, seq_p=0.01)), now=NOW)
    assert got.action == "rollback"
    assert got.weights == {"control": 100.0, "candidate": 0.0}
    assert "significant harm on conversion (sequential p of harm=0.01)" in got.reason


def test_harm_respects_a_decrease_direction() -> None:
    metric = Metric(name="conversion", kind="continuous", direction="decrease")
    data = experiment(AB_50, metrics=(metric,))
    harm = comparison(lift=+0.02, seq_p=0.01, good=False)
    assert decision.decide(data, evidence(harm), now=NOW).action == "rollback"
    win = comparison(lift=-0.02, seq_p=0.01, good=True)
    assert decision.decide(data, evidence(win), now=NOW).action == "promote"


def test_srm_does_not_block_a_rollback() -> None:
    ev = evidence(comparison(), guardrails=(rail(status="breach"),), flagged=True)
    assert decision.decide(experiment(AB_50), ev, now=NOW).action == "rollback"


def test_abn_rollback_moves_only_the_harmful_share_to_the_control() -> None:
    data = experiment({"control": 50.0, "b": 25.0, "c": 25.0})
    ev = evidence(comparison("b", lift=-0.02, seq_p=0.001), comparison("c"))
    got = decision.decide(data, ev, now=NOW)
    assert got.action == "rollback"
    assert got.weights == {"control": 75.0, "b": 0.0, "c": 25.0}
    assert got.reason.startswith("rollback: b: significant harm")


def test_a_rolled_back_arm_is_ignored_afterwards() -> None:
    data = experiment({"control": 75.0, "b": 0.0, "c": 25.0})
    ev = evidence(comparison("b", lift=-0.02, seq_p=0.001), comparison("c"))
    assert decision.decide(data, ev, now=NOW).action != "rollback"


# ------------------------------------------------------------------- promote


def test_a_sequential_win_promotes() -> None:
    got = decision.decide(experiment(AB_50), evidence(comparison(lift=0.02, seq_p=0.01)), now=NOW)
    assert (got.action, got.weights) == ("promote", {"control": 0.0, "candidate": 100.0})
    assert got.reason.startswith("promote: candidate wins on conversion")


def test_srm_blocks_promotion_and_holds_the_weights() -> None:
    got = decision.decide(experiment(AB_50), evidence(comparison(seq_p=0.01), flagged=True), now=NOW)
    assert (got.action, got.weights) == ("continue", AB_50)
    assert "SRM FLAGGED" in got.reason and "sample ratio mismatch" in got.reason


def test_promotion_waits_for_min_units_per_arm() -> None:
    got = decision.decide(experiment(AB_50, units=400), evidence(comparison(seq_p=0.001)), now=NOW)
    assert got.action == "continue"
    assert "waiting for 500 units per arm" in got.reason


@pytest.mark.parametrize("status", ["inconclusive", "insufficient_data"])
def test_promotion_needs_passing_guardrails(status: str) -> None:
    ev = evidence(comparison(seq_p=0.001), guardrails=(rail(status=status),))
    got = decision.decide(experiment(AB_50), ev, now=NOW)
    assert got.action == "continue"
    assert f"guardrails not yet shown to pass (candidate errors {status})" in got.reason


def test_an_insufficient_primary_never_wins() -> None:
    got = decision.decide(experiment(AB_50), evidence(comparison(seq_p=0.001, status="insufficient_data")), now=NOW)
    assert got.action == "continue"
    assert "insufficient data" in got.reason


def test_promotion_waits_for_the_last_ramp_step() -> None:
    data = experiment({"control": 75.0, "candidate": 25.0})
    got = decision.decide(data, evidence(comparison(seq_p=0.001)), now=NOW)
    assert (got.action, got.weights) == ("ramp", {"control": 50.0, "candidate": 50.0})


def test_holm_adjusts_the_primary_across_candidates() -> None:
    weights = {"control": 50.0, "b": 25.0, "c": 25.0}
    # 0.03 and 0.04 each win alone at alpha 0.05; Holm makes them 0.06 and 0.06.
    ev = evidence(comparison("b", seq_p=0.03), comparison("c", seq_p=0.04))
    assert decision.holm_primary(experiment(weights), ev) == pytest.approx({"b": 0.06, "c": 0.06})
    assert decision.decide(experiment(weights), ev, now=NOW).action == "continue"


def test_abn_promotes_the_best_of_several_winners() -> None:
    ev = evidence(comparison("b", lift=0.01, seq_p=0.001), comparison("c", lift=0.03, seq_p=0.002))
    got = decision.decide(experiment({"control": 50.0, "b": 25.0, "c": 25.0}), ev, now=NOW)
    assert (got.action, got.weights) == ("promote", {"control": 0.0, "b": 0.0, "c": 100.0})


def test_canary_mode_promotes_on_guardrails_alone() -> None:
    data = experiment(AB_50, metrics=())
    got = decision.decide(data, evidence(guardrails=(rail(),)), now=NOW)
    assert got.action == "promote"
    assert "canary" in got.reason


# ---------------------------------------------------------------------- stop


def test_max_duration_without_a_winner_stops_back_to_the_control() -> None:
    data = experiment(AB_50, started_at=NOW - 15 * DAY)
    got = decision.decide(data, evidence(comparison(seq_p=0.3)), now=NOW)
    assert (got.action, got.weights) == ("stop", {"control": 100.0, "candidate": 0.0})
    assert "max_duration 14d reached" in got.reason


def test_a_winner_past_max_duration_is_still_promoted() -> None:
    data = experiment(AB_50, started_at=NOW - 15 * DAY)
    assert decision.decide(data, evidence(comparison(seq_p=0.001)), now=NOW).action == "promote"


def test_unknown_start_never_stops() -> None:
    data = experiment(AB_50, started_at=None)
    assert decision.decide(data, evidence(comparison(seq_p=0.3)), now=NOW + 100 * DAY).action == "continue"


# ---------------------------------------------------------------------- ramp


def test_ramp_advances_to_the_next_step() -> None:
    data = experiment({"control": 95.0, "candidate": 5.0})
    got = decision.decide(data, evidence(comparison(seq_p=0.4)), now=NOW)
    assert (got.action, got.weights) == ("ramp", {"control": 75.0, "candidate": 25.0})
    assert "guardrails pass at 5%" in got.reason


def test_ramp_needs_min_units_in_the_current_epoch() -> None:
    data = experiment({"control": 95.0, "candidate": 5.0}, units=2000, current_units=100)
    got = decision.decide(data, evidence(comparison(seq_p=0.4)), now=NOW)
    assert got.action == "continue"
    assert "in epoch 2 before the next ramp step" in got.reason


def test_ramp_needs_passing_guardrails() -> None:
    data = experiment({"control": 95.0, "candidate": 5.0})
    ev = evidence(comparison(seq_p=0.4), guardrails=(rail(status="inconclusive"),))
    assert decision.decide(data, ev, now=NOW).action == "continue"


def test_srm_blocks_the_ramp() -> None:
    data = experiment({"control": 95.0, "candidate": 5.0})
    assert decision.decide(data, evidence(comparison(seq_p=0.4), flagged=True), now=NOW).action == "continue"


def test_ramp_splits_the_step_evenly_between_candidates() -> None:
    data = experiment({"control": 90.0, "b": 5.0, "c": 5.0})
    got = decision.decide(data, evidence(comparison("b"), comparison("c")), now=NOW)
    assert (got.action, got.weights) == ("ramp", {"control": 75.0, "b": 12.5, "c": 12.5})


def test_off_schedule_weights_ramp_to_the_next_higher_step() -> None:
    data = experiment({"control": 90.0, "candidate": 10.0})
    assert decision.decide(data, evidence(comparison()), now=NOW).weights == {"control": 75.0, "candidate": 25.0}


def test_at_the_last_step_without_a_winner_it_continues() -> None:
    got = decision.decide(experiment(AB_50), evidence(comparison(seq_p=0.3)), now=NOW)
    assert (got.action, got.weights) == ("continue", AB_50)
    assert got.reason.startswith("continue: no significant difference yet")


# -------------------------------------------------------------------- bandit


BANDIT = AnalysisSettings(bandit=Bandit(enabled=True, floor=0.05, min_units=500))


def test_bandit_waits_for_min_units_per_arm() -> None:
    data = experiment(AB_50, units=400, settings=BANDIT)
    got = decision.decide(data, evidence(comparison()), now=NOW, rng=np.random.default_rng(1))
    assert got.action == "continue"
    assert "bandit waits for 500 units per arm" in got.reason


def test_bandit_moves_traffic_to_the_likely_best_arm() -> None:
    data = experiment(AB_50, units=4000, settings=BANDIT, rate={"control": 0.10, "candidate": 0.15})
    got = decision.decide(data, evidence(comparison(seq_p=0.3)), now=NOW, rng=np.random.default_rng(1))
    assert got.action == "ramp"
    # The candidate is almost surely best: it gets all but the control's floor.
    assert got.weights == {"control": 5.0, "candidate": 95.0}


def test_bandit_keeps_weights_that_barely_move() -> None:
    data = experiment(
        {"control": 5.0, "candidate": 95.0}, units=4000, settings=BANDIT, rate={"control": 0.10, "candidate": 0.15}
    )
    got = decision.decide(data, evidence(comparison(seq_p=0.3)), now=NOW, rng=np.random.default_rng(1))
    assert (got.action, got.weights) == ("continue", {"control": 5.0, "candidate": 95.0})


def test_bandit_decisions_still_use_the_sequential_result() -> None:
    data = experiment(AB_50, units=4000, settings=BANDIT)
    ev = evidence(comparison(lift=0.02, seq_p=0.001))
    assert decision.decide(data, ev, now=NOW, rng=np.random.default_rng(1)).action == "promote"
    ev = evidence(comparison(lift=-0.02, seq_p=0.001))
    assert decision.decide(data, ev, now=NOW, rng=np.random.default_rng(1)).action == "rollback"


# --------------------------------------------------------------- explanation


def test_the_reason_is_one_line_with_statistic_p_ci_n_and_srm() -> None:
    got = decision.decide(experiment(AB_50), evidence(comparison(lift=0.02, seq_p=0.0123)), now=NOW)
    assert "\n" not in got.reason
    for part in (
        "conversion candidate +20.0%",
        "seq CI",
        "seq p=0.012",
        "n=1000/1000",
        "SRM ok (seq p=0.5, chi-square p=",
    ):
        assert part in got.reason, part


def test_decision_to_dict_has_the_documented_fields() -> None:
    got = decision.decide(experiment(AB_50), evidence(comparison()), now=NOW)
    assert set(got.to_dict()) == {"action", "reason", "weights"}


def test_same_weights_compares_at_the_reported_precision() -> None:
    assert weight_math.same_weights({"a": 33.333333, "b": 66.666667}, {"a": 33.33, "b": 66.67})
    assert not weight_math.same_weights({"a": 50.0, "b": 50.0}, {"a": 45.0, "b": 55.0})
    assert not weight_math.same_weights({"a": 50.0}, {"b": 50.0})


def test_nan_sequential_p_never_decides() -> None:
    ev = evidence(comparison(seq_p=math.nan))
    assert decision.decide(experiment(AB_50), ev, now=NOW).action == "continue"


def test_weights_are_rounded_to_the_router_resolution() -> None:
    data = experiment({"control": 94.0, "b": 2.0, "c": 2.0, "d": 2.0})
    got = decision.decide(
        replace(data, settings=AnalysisSettings(ramp=(10.0,))),
        evidence(comparison("b"), comparison("c"), comparison("d")),
        now=NOW,
    )
    # Largest remainder: the hundredth left over goes to one arm, so they sum to exactly 100.
    assert got.weights == {"control": 90.0, "b": 3.34, "c": 3.33, "d": 3.33}


# ------------------------------------------------- reviewer regressions (policy)


def test_a_past_win_is_no_evidence_of_harm() -> None:
    # The running minimum was reached while the candidate led; now it trails slightly.
    past_win = comparison(lift=-0.001, seq_p=0.001, better=0.001, worse=0.5)
    got = decision.decide(experiment(AB_50), evidence(past_win), now=NOW)
    assert got.action == "continue"


def test_past_harm_is_no_evidence_of_a_win() -> None:
    past_harm = comparison(lift=0.01, seq_p=0.001, better=0.5, worse=0.001)
    assert decision.decide(experiment(AB_50), evidence(past_harm), now=NOW).action == "continue"
    assert decision.holm_primary(experiment(AB_50), evidence(past_harm)) == {"candidate": 0.5}


def test_harm_rollback_waits_for_min_units_per_arm() -> None:
    harm = comparison(lift=-0.05, seq_p=0.001)
    got = decision.decide(experiment(AB_50, units=200), evidence(harm), now=NOW)
    assert got.action == "continue"
    assert "waiting for 500 units per arm" in got.reason
    # a guardrail breach keeps its own logic
    ev = evidence(harm, guardrails=(rail(status="breach"),))
    assert decision.decide(experiment(AB_50, units=200), ev, now=NOW).action == "rollback"


def _zero_conversions(units: tuple[int, int] = (950, 50)) -> d.ExperimentData:
    """Like /tmp/rv/zero.json: control 48/950, candidate 0/50, weights 95/5."""
    metric = Metric(name="conv", kind="binary", direction="increase")
    (nc, nt), weights = units, {"control": 95.0, "candidate": 5.0}
    arms = (
        d.Arm("control", 95.0, (d.Stratum(1, nc, {"conv": Sample(nc, round(nc * 48 / 950))}),)),
        d.Arm("candidate", 5.0, (d.Stratum(1, nt, {"conv": Sample(nt, 0)}),)),
    )
    return d.ExperimentData(
        name="exp",
        metrics=(metric,),
        arms=arms,
        epochs=(d.Epoch(1, weights, NOW),),
        settings=AnalysisSettings(guardrails=()),
        started_at=NOW,
    )


def test_zero_conversions_in_a_tiny_arm_is_not_a_rollback() -> None:
    result = analyzer.analyze(_zero_conversions(), now=NOW)
    assert result.decision.action == "continue"


def test_a_look_below_min_units_does_not_seed_the_running_minima() -> None:
    previous = {("candidate", "conv"): Running(0.7, 0.8, (-0.06, 0.0), (-0.9, 0.2))}
    result = analyzer.analyze(_zero_conversions(), now=NOW, previous=previous)
    assert result.running() == previous  # carried over, this look's p and interval left out
    assert analyzer.analyze(_zero_conversions(), now=NOW).running() == {("candidate", "conv"): FRESH}
    # with enough units in both arms the look does count
    enough = analyzer.analyze(_zero_conversions((9500, 500)), now=NOW, previous=previous)
    (c,) = enough.comparisons
    assert enough.running() == {("candidate", "conv"): c.running()}
    assert c.sequential_p_worse < 0.8
    low, high = c.sequential_ci_absolute
    assert low == -0.06 and high < 0  # intersected with the previous look's


@pytest.mark.parametrize("k", [3, 7])
def test_the_ramp_reaches_its_last_step_with_many_candidates(k: int) -> None:
    names = [f"c{i}" for i in range(k)]
    weights = {"control": 95.0} | {n: 5.0 / k for n in names}
    actions = []
    for _ in range(6):
        ev = evidence(*(comparison(n, lift=0.01 * (i + 1), seq_p=0.001) for i, n in enumerate(names)))
        got = decision.decide(experiment(weights, units=2000), ev, now=NOW)
        actions.append(got.action)
        assert sum(round(w * 100) for w in got.weights.values()) == 10_000  # exactly 100
        assert math.fsum(got.weights.values()) == pytest.approx(100.0, abs=1e-9)
        if got.action == "promote":
            break
        weights = got.weights  # the next look serves what this one decided
    assert actions == ["ramp", "ramp", "promote"]
    assert sum(w for n, w in weights.items() if n != "control") == pytest.approx(50.0, abs=1e-9)


def test_the_bandit_gives_no_weight_to_a_candidate_whose_guardrails_do_not_pass() -> None:
    data = experiment(AB_50, units=4000, settings=BANDIT, rate={"control": 0.10, "candidate": 0.15})
    ev = evidence(comparison(seq_p=0.3), guardrails=(rail(status="inconclusive"),))
    got = decision.decide(data, ev, now=NOW, rng=np.random.default_rng(1))
    assert got.weights["candidate"] <= 50.0
    assert got.action == "continue"
    assert "candidate held: guardrails not yet shown to pass" in got.reason


def test_the_bandit_still_moves_the_other_arms_around_a_held_candidate() -> None:
    weights = {"control": 40.0, "b": 30.0, "c": 30.0}
    data = experiment(weights, units=4000, settings=BANDIT, rate={"control": 0.10, "b": 0.15, "c": 0.15})
    ev = evidence(
        comparison("b", seq_p=0.3), comparison("c", seq_p=0.3), guardrails=(rail("b", status="inconclusive"), rail("c"))
    )
    got = decision.decide(data, ev, now=NOW, rng=np.random.default_rng(1))
    assert got.action == "ramp"
    assert got.weights["b"] <= 30.0 and got.weights["c"] > 30.0
    assert sum(round(w * 100) for w in got.weights.values()) == 10_000


def test_canary_mode_without_guardrail_data_does_not_promote() -> None:
    data = experiment(AB_50, metrics=())
    got = decision.decide(data, evidence(guardrails=()), now=NOW)
    assert got.action == "continue"
    assert "no guardrail data yet" in got.reason


def test_canary_mode_without_guardrail_data_does_not_ramp() -> None:
    data = experiment({"control": 95.0, "candidate": 5.0}, metrics=())
    got = decision.decide(data, evidence(guardrails=()), now=NOW)
    assert got.action == "continue" and "no guardrail data yet" in got.reason
    assert decision.decide(data, evidence(guardrails=(rail("candidate"),)), now=NOW).action == "ramp"


def test_canary_mode_needs_every_candidates_guardrails_evaluated() -> None:
    data = experiment({"control": 50.0, "b": 25.0, "c": 25.0}, metrics=())
    got = decision.decide(data, evidence(guardrails=(rail("b"),)), now=NOW)
    assert got.action == "continue"
    assert "no guardrail data yet" in got.reason


def test_holm_keeps_rolled_back_candidates_in_the_family() -> None:
    data = experiment({"control": 50.0, "b": 50.0, "c": 0.0})  # c was rolled back
    ev = evidence(comparison("b", seq_p=0.03), comparison("c", lift=-0.01, seq_p=0.5))
    assert decision.holm_primary(data, ev) == pytest.approx({"b": 0.06})
    assert decision.decide(data, ev, now=NOW).action == "continue"
    # a candidate with no usable p still counts (as p = 1)
    ev = evidence(comparison("b", seq_p=0.03))
    assert decision.holm_primary(data, ev) == pytest.approx({"b": 0.06})
