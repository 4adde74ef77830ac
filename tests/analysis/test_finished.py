"""A promotion stays a promotion: the looks after it do not re-test it on the data that followed.

After a promotion the control's returning users are served the candidate, and their
outcomes (intent-to-treat) still go to the control's first-exposure strata, which move
toward the candidate. A borderline win then drifts above alpha, and `decision._finished`
turned "already promoted" into "stop" (the Kubernetes phase from Promoted to Inconclusive).
"""

from __future__ import annotations

from abrouter.analysis import analyzer, history
from abrouter.analysis.data import Arm, Epoch, ExperimentData, Stratum
from abrouter.analysis.stats.sample import Sample
from abrouter.contract.model import AnalysisSettings, Metric

SETTINGS = AnalysisSettings(min_units_per_arm=500, burn_in_s=0.0, ramp=())
N = 6000


def look(control: int, candidate: int, *, promoted: bool) -> ExperimentData:
    """6,000 units per arm in epoch 1 (50/50); after the promotion, epoch 2 holds the candidate's new units."""
    weights = {"control": 0.0, "candidate": 100.0} if promoted else {"control": 50.0, "candidate": 50.0}
    epochs = [Epoch(1, {"control": 50.0, "candidate": 50.0})]
    later = {"control": (), "candidate": ()}
    if promoted:
        epochs.append(Epoch(2, {"control": 0.0, "candidate": 100.0}))
        later = {
            "control": (Stratum(2, 0, {"m": Sample(0, 0, 0)}),),
            "candidate": (Stratum(2, 3000, {"m": Sample(3000, 180, 180)}),),
        }
    arms = tuple(
        Arm(name, weights[name], (Stratum(1, N, {"m": Sample(N, s, s)}), *later[name]))
        for name, s in (("control", control), ("candidate", candidate))
    )
    return ExperimentData("e", (Metric("m", "binary"),), arms, tuple(epochs), SETTINGS, started_at=0.0)


def test_a_borderline_promotion_is_not_turned_into_a_stop_by_the_data_after_it() -> None:
    first = analyzer.analyze(look(300, 370, promoted=False), now=3600.0)
    p = first.comparisons[0].p_better_now
    assert first.decision.action == "promote" and 0.01 < p < 0.05, (first.decision.reason, p)
    # The next look: the control's returning users, now served the candidate, converted
    # at its rate and moved the control's epoch-1 sum from 300 to 330.
    seed = history.decode(history.encode(first, applied=True))
    assert seed.promoted == "candidate"
    drifted = look(330, 380, promoted=True)
    without = analyzer.analyze(drifted, now=7200.0, previous=seed.running)
    assert without.comparisons[0].p_better_now > 0.05  # the win is gone from the drifted data
    assert without.decision.action == "stop"  # a candidate at 100% that no look promoted (a hand edit)
    kept = analyzer.analyze(drifted, now=7200.0, previous=seed.running, promoted=seed.promoted)
    assert kept.decision.action == "promote", kept.decision.reason
    assert kept.decision.weights == {"control": 0.0, "candidate": 100.0}
    assert "promoted at an earlier look" in kept.decision.reason


def test_a_promoted_candidate_that_breaches_a_guardrail_is_still_rolled_back() -> None:
    # Only a promotion is remembered; harm (rule 2) is checked first, as before.
    first = analyzer.analyze(look(300, 370, promoted=False), now=3600.0)
    seed = history.decode(history.encode(first, applied=True))
    harmful = look(400, 250, promoted=True)
    got = analyzer.analyze(harmful, now=7200.0, previous=seed.running, promoted=seed.promoted)
    assert got.decision.action == "rollback", got.decision.reason


def test_only_a_promote_entry_remembers_a_winner() -> None:
    result = analyzer.analyze(look(300, 305, promoted=False), now=3600.0)
    assert result.decision.action == "continue"
    assert history.decode(history.encode(result, applied=True)).promoted is None
