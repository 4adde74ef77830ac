"""The balanced ramp (`analysis.ramp_rest`): every step compares a control and candidates of one size.

GrowthBook's Safe Rollouts grow the coverage at an even split; here a rest variant serving
the control's model takes the traffic outside the comparison.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from abrouter import cli
from abrouter.analysis import analyzer, html_report, report_text, simulate
from abrouter.analysis import data as d
from abrouter.analysis.stats.power import rollout, sample_size
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import experiment as model
from abrouter.contract.history import DecisionEntry
from abrouter.contract.model import AnalysisSettings, Metric
from abrouter.router.assignment import Assigner

SPEC = {
    "name": "b",
    "unit": {"header": "X-User-Id"},
    "variants": [
        {"name": "control", "upstream": "http://a:1", "weight": 5},
        {"name": "candidate", "upstream": "http://b:1", "weight": 5},
        {"name": "rest", "upstream": "http://a:1", "weight": 90},
    ],
    "metrics": [{"name": "conversion", "kind": "binary"}],
    "analysis": {"ramp": [5, 25, 50], "ramp_rest": "rest"},
}


def spec(**analysis: object) -> dict[str, object]:
    return SPEC | {"analysis": SPEC["analysis"] | analysis}  # type: ignore[operator]


def test_a_balanced_spec_parses_and_round_trips() -> None:
    e = model.parse(SPEC)
    assert e.analysis.ramp_rest == "rest"
    assert model.parse(model.to_dict(e)) == e


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (spec(ramp_rest="control"), r"analysis.ramp_rest: must name a variant other than the control, got 'control'"),
        (spec(ramp_rest="nope"), r"analysis.ramp_rest: must name a variant other than the control"),
        (
            SPEC | {"variants": [*SPEC["variants"][:2], {"name": "rest", "upstream": "http://c:1", "weight": 90}]},  # type: ignore[index]
            r"analysis.ramp_rest: rest must serve the control's model",
        ),
        (spec(ramp=[]), r"analysis.ramp_rest: balances a ramp: needs analysis.ramp"),
        (spec(bandit={"enabled": True}), r"analysis.ramp_rest: balances a ramp"),
        (spec(ramp=[5, 60]), r"analysis.ramp_rest: the final ramp step 60% leaves no room"),
    ],
)
def test_a_bad_rest_is_refused_naming_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(model.ConfigError, match=message):
        model.parse(change)


SETTINGS = AnalysisSettings(
    ramp=(5.0, 25.0, 50.0), ramp_rest="rest", burn_in_s=0.0, guardrails=(), min_units_per_arm=500
)


def data(weights: dict[str, float], units: dict[str, int]) -> d.ExperimentData:
    arms = tuple(
        d.Arm(name, weights[name], (d.Stratum(1, units[name], {"m": Sample(units[name], units[name] // 20)}),))
        for name in ("control", "candidate", "rest")
    )
    return d.ExperimentData("b", (Metric("m", "binary"),), arms, (d.Epoch(1, dict(weights)),), SETTINGS, started_at=0.0)


def test_each_step_gives_the_control_the_candidates_share_and_the_rest_the_remainder() -> None:
    look = data({"control": 5.0, "candidate": 5.0, "rest": 90.0}, {"control": 600, "candidate": 600, "rest": 10_800})
    assert [a.name for a in look.candidates] == ["candidate"]  # the rest is never compared
    result = analyzer.analyze(look, now=60.0)
    assert [c.variant for c in result.comparisons] == ["candidate"]
    assert not result.srm.flagged and set(result.srm.observed) == {"control", "candidate", "rest"}
    assert result.decision.action == "ramp", result.decision.reason
    assert result.decision.weights == {"control": 25.0, "candidate": 25.0, "rest": 50.0}
    final = data({"control": 25.0, "candidate": 25.0, "rest": 50.0}, {"control": 3000, "candidate": 3000, "rest": 6000})
    assert analyzer.analyze(final, now=60.0).decision.weights == {"control": 50.0, "candidate": 50.0, "rest": 0.0}


def test_a_rollback_gives_the_control_the_rest_too() -> None:
    # 25% step: the candidate converts at 2% against the control's 5% (and the rest's).
    look = data({"control": 25.0, "candidate": 25.0, "rest": 50.0}, {"control": 3000, "candidate": 3000, "rest": 6000})
    arms = tuple(
        d.Arm(a.name, a.weight, (d.Stratum(1, a.units, {"m": Sample(a.units, a.units // 50)}),))
        if a.name == "candidate"
        else a
        for a in look.arms
    )
    result = analyzer.analyze(
        d.ExperimentData("b", look.metrics, arms, look.epochs, SETTINGS, started_at=0.0), now=60.0
    )
    assert result.decision.action == "rollback", result.decision.reason
    assert result.decision.weights == {"control": 100.0, "candidate": 0.0, "rest": 0.0}


def test_the_rest_is_in_the_srm_check() -> None:
    # The rest got 20% fewer units than its weight says: assignment or logging is off.
    look = data({"control": 5.0, "candidate": 5.0, "rest": 90.0}, {"control": 600, "candidate": 600, "rest": 8_600})
    result = analyzer.analyze(look, now=60.0)
    assert result.srm.flagged and result.decision.action == "continue"


# ------------------------------------------------------------------ plan


def test_plan_counts_the_rest_as_users_outside_the_comparison() -> None:
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)  # 31,231 per arm
    kw = dict(min_units_per_arm=500, burn_in_s=0.0, traffic=None)
    short = rollout(plan, ramp=(5.0, 25.0), balanced=True, **kw)  # type: ignore[arg-type]
    # Final step: control and candidate 25% each, so n / 0.25 users; the 5% step: 500 / 0.05.
    assert (short.final_units, short.ramp_units) == (math.ceil(31_231 / 0.25), 10_000)
    # Unbalanced, the 75% control adds information: 2·0.75·0.25 / (0.75 + 0.25) per user.
    assert rollout(plan, ramp=(5.0, 25.0), **kw).final_units == math.ceil(31_231 / 0.375)  # type: ignore[arg-type]
    # At the default final step of 50% both splits are 50/50: the same users.
    default = (5.0, 25.0, 50.0)
    assert rollout(plan, ramp=default, balanced=True, **kw) == rollout(plan, ramp=default, **kw)  # type: ignore[arg-type]


def test_plan_balanced_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--baseline", "0.05", "--mde", "0.1", "--relative", "--burn-in", "0", "--json"]
    assert cli.main([*argv, "--ramp", "5,25", "--balanced"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["final_units"], doc["ramp_units"], doc["balanced"]) == (124_924, 10_000, True)
    assert cli.main([*argv, "--ramp", "5,60", "--balanced"]) == 2
    assert "--balanced: needs a --ramp whose final step leaves the control" in capsys.readouterr().err


def test_plan_reads_the_ramp_the_rest_and_the_arms_from_a_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config: the spec's compared arms (not the rest), alpha, ramp, balance, minimum and burn-in; flags win."""
    path = tmp_path / "b.json"
    analysis = {"ramp": [5, 25], "alpha": 0.01, "min_units_per_arm": 300, "burn_in": "2d"}
    path.write_text(json.dumps(spec(**analysis)))
    argv = ["plan", "--baseline", "0.05", "--mde", "0.1", "--relative", "--json", "--traffic", "1000"]
    spelled = ["--variants", "2", "--alpha", "0.01", "--ramp", "5,25", "--balanced", "--min-units-per-arm", "300"]

    def plan(*extra: str) -> dict[str, object]:
        assert cli.main([*argv, *extra]) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    from_spec = plan("--config", str(path))
    assert from_spec == plan(*spelled, "--burn-in", "2")
    assert (from_spec["variants"], from_spec["alpha"], from_spec["balanced"]) == (2, 0.01, True)
    assert from_spec["ramp_units"] == 300 / 0.05 and from_spec["burn_in_units"] == 2 * 1000
    assert from_spec != plan()  # the defaults differ: the spec was read
    assert plan("--config", str(path), "--burn-in", "0")["burn_in_units"] == 0  # a flag given wins
    path.write_text(json.dumps(spec(ramp=[5, 60])))
    assert cli.main([*argv, "--config", str(path)]) == 2
    assert f"{path}, line 1: analysis.ramp_rest: the final ramp step 60% leaves no room" in capsys.readouterr().err


# ------------------------------------------------------------------ closed loop
# The real analyzer and policy (`simulate.run`), fixed seeds; tolerances three Monte-Carlo
# SEs, 3·√(r(1 − r)/B). bench/sim_balanced_ramp.py runs the larger versions
# (docs/statistics.md, "Balanced ramp").

ALPHA = 0.05
BALANCED = simulate.settings_for(expected_units=10_000, burn_in_s=0.0, ramp_rest=simulate.REST)


def _tolerance(rate: float, experiments: int) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / experiments)


@pytest.mark.parametrize(
    ("world", "looks", "per_look", "seed"),
    [(simulate.World(), 20, 3_000, 31), (simulate.World(returning=True), 16, 1_500, 32)],
    ids=["fresh", "returning"],
)
def test_aa_false_promotions_stay_below_alpha(world: simulate.World, looks: int, per_look: int, seed: int) -> None:
    rng, experiments = np.random.default_rng(seed), 120
    outcomes = [
        simulate.run(rng, world=world, settings=BALANCED, looks=looks, per_look=per_look) for _ in range(experiments)
    ]
    promoted = float(np.mean([o.action == "promote" for o in outcomes]))
    wrong = float(np.mean([o.action in ("promote", "rollback") for o in outcomes]))
    assert promoted <= ALPHA + _tolerance(ALPHA, experiments), f"{promoted:.3f}"
    assert wrong <= 2 * ALPHA + _tolerance(2 * ALPHA, experiments), f"{wrong:.3f}"


def test_power_at_the_plans_total_with_the_balanced_default_ramp() -> None:
    """As tests/analysis/test_plan_power.py, with the rest arm: ≥ 70% (the issue's 75% less about 2 SE)."""
    plan = sample_size(baseline=0.05, mde=0.10, relative=True)
    settings = simulate.settings_for(expected_units=plan.units_per_arm, ramp_rest=simulate.REST)
    kw = dict(ramp=settings.ramp, min_units_per_arm=settings.min_units_per_arm, balanced=True)
    fixed = rollout(plan, burn_in_s=0.0, traffic=None, **kw)  # type: ignore[arg-type]
    days, burn_days = 14.0, settings.burn_in_s / 86_400
    traffic = max((fixed.ramp_units + fixed.final_units) / days, fixed.final_units / (days - burn_days))
    steps = rollout(plan, burn_in_s=settings.burn_in_s, traffic=traffic, **kw)  # type: ignore[arg-type]
    assert steps.total_units is not None and steps.days is not None and abs(steps.days - days) < 0.01
    rng, runs, looks = np.random.default_rng(33), 200, 40
    world = simulate.World(effect=simulate.constant(0.10))
    per_look = math.ceil(steps.total_units / looks)
    outcomes = [simulate.run(rng, world=world, settings=settings, looks=looks, per_look=per_look) for _ in range(runs)]
    power = float(np.mean([o.action == "promote" for o in outcomes]))
    assert power >= 0.70, f"{power:.3f} ± {math.sqrt(power * (1 - power) / runs):.3f}"


def test_the_report_text_counts_the_rest_as_neither_control_nor_candidate() -> None:
    entry = DecisionEntry(
        at=0.0,
        epoch=2,
        action="ramp",
        reason="ramp: guardrails pass at 5%: candidates to 25% in total",
        weights={"control": 25.0, "candidate": 25.0, "rest": 50.0},
        applied=True,
        units=1200,
    )
    assert report_text.steps([entry], control="control", rest="rest").startswith("ramp to 25% (")
    headline = report_text.headline([entry], action="continue", reason="", control="control", rest="rest")
    assert headline.startswith("Ramping, no winner yet: candidate 25%.")


# ------------------------------------------------------------------ the router's side


def test_the_routers_assignment_moves_units_only_out_of_the_rest() -> None:
    """The router's own `Assigner` over the balanced steps: no unit crosses between control and candidate."""
    names = ("control", "candidate", "rest")
    steps = [(5.0, 5.0, 90.0), (25.0, 25.0, 50.0), (50.0, 50.0, 0.0)]
    assigners = [Assigner(salt="b", names=names, weights=w) for w in steps]
    units = [f"user-{i}" for i in range(20_000)]
    paths = [[names[a.assign(u)] for a in assigners] for u in units]
    crossed = sum(1 for p in paths for x, y in itertools.pairwise(p) if {x, y} == {"control", "candidate"})
    left_rest = sum(1 for p in paths for x, y in itertools.pairwise(p) if x == "rest" and y != "rest")
    stayed = sum(1 for p in paths for x, y in itertools.pairwise(p) if x in ("control", "candidate") and y != x)
    assert crossed == 0 and stayed == 0
    # About (50 − 10)% then (100 − 50)% of all units leave the rest, split evenly.
    assert left_rest == pytest.approx(20_000 * 0.9, rel=0.02)
    final = [p[-1] for p in paths]
    assert final.count("candidate") == pytest.approx(10_000, rel=0.03)


def test_the_html_report_lists_the_rest_as_outside_the_comparison() -> None:
    look = data({"control": 5.0, "candidate": 5.0, "rest": 90.0}, {"control": 600, "candidate": 600, "rest": 10_800})
    page = html_report.render(model.parse(SPEC), analyzer.analyze(look, now=60.0), [])
    assert "<b>rest</b> (the control's model outside the comparison: balanced ramp)" in page
