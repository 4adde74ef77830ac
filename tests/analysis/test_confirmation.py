"""A promotion rests on the final ramp step's data, at this look (issue 9, defect 5)."""

from __future__ import annotations

import math
from dataclasses import replace

from abrouter.analysis import analyzer, candidates
from abrouter.analysis import data as d
from abrouter.analysis.stats.sample import Sample
from abrouter.contract.experiment import AnalysisSettings, Bandit, Metric

CONVERSION = Metric(name="conversion", kind="binary", direction="increase")


def experiment(
    shares: list[float], rates: list[tuple[float, float]], *, settings: AnalysisSettings
) -> d.ExperimentData:
    """One epoch per candidate share (percent) with 4,000 users split by it; conversion rates per arm."""
    epochs = tuple(d.Epoch(i + 1, {"control": 100 - s, "candidate": s}) for i, s in enumerate(shares))

    def strata(arm: int) -> tuple[d.Stratum, ...]:
        out = []
        for i, share in enumerate(shares):
            n = round(40 * (share if arm else 100 - share))
            out.append(d.Stratum(i + 1, n, {"conversion": Sample(n, round(n * rates[i][arm]))}))
        return tuple(out)

    arms = (d.Arm("control", 100 - shares[-1], strata(0)), d.Arm("candidate", shares[-1], strata(1)))
    return d.ExperimentData(
        name="exp", metrics=(CONVERSION,), arms=arms, epochs=epochs, settings=settings, started_at=0.0
    )


SETTINGS = AnalysisSettings(guardrails=(), expected_units_per_arm=4000)
EVEN = [(0.05, 0.05)] * 4


def test_the_final_step_starts_at_the_first_epoch_of_the_trailing_run_at_the_last_share() -> None:
    assert candidates.confirmation_start(experiment([5, 25, 50, 50], EVEN, settings=SETTINGS)) == 2
    # A weight change away from the final share (a rollback of one of two candidates, say)
    # ends the run: the evidence starts again once the share is back.
    assert candidates.confirmation_start(experiment([50, 25, 50, 50], EVEN, settings=SETTINGS)) == 2
    assert candidates.confirmation_start(experiment([5, 25, 50, 25], EVEN, settings=SETTINGS)) == 4
    assert candidates.confirmation_start(experiment([5, 25, 50, 50], EVEN, settings=replace(SETTINGS, ramp=()))) == 0
    bandit = replace(SETTINGS, bandit=Bandit(enabled=True))
    assert candidates.confirmation_start(experiment([5, 25, 50, 50], EVEN, settings=bandit)) == 0


def test_an_effect_confined_to_the_early_steps_does_not_promote() -> None:
    # The candidate converts at 10% vs 5% in the 5% and 25% steps, then alike at 50%.
    data = experiment([5, 25, 50], [(0.05, 0.10), (0.05, 0.10), (0.05, 0.05)], settings=SETTINGS)
    result = analyzer.analyze(data, now=1.0)
    c = result.comparisons[0]
    # Pooled over every epoch the early effect is significant: the old rule (running-minimum
    # p < alpha, lift > 0) promoted here.
    assert c.sequential_p_better < 0.05 and c.absolute_lift > 0
    assert c.p_better_now > 0.4 and c.information == 0.5  # the final step alone: 2,000 per arm
    assert result.decision.action != "promote", result.decision.reason
    # The same effect at the final step promotes, and the reason quotes this look's p.
    data = experiment([5, 25, 50], [(0.05, 0.05), (0.05, 0.05), (0.05, 0.08)], settings=SETTINGS)
    result = analyzer.analyze(data, now=1.0)
    assert result.decision.action == "promote", result.decision.reason
    assert "this look's one-sided p=" in result.decision.reason


def test_without_data_at_the_final_step_there_is_no_evidence_yet() -> None:
    data = experiment([5, 25], [(0.05, 0.15), (0.05, 0.15)], settings=SETTINGS)
    c = analyzer.analyze(data, now=1.0).comparisons[0]
    assert math.isnan(c.p_better_now) and math.isnan(c.p_worse_now) and c.information == 0.0
