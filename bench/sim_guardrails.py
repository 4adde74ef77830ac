"""Guardrails (issue 9, defect 3): the floored relative margin and the current-epoch check.

    PYTHONPATH=$PWD .venv/bin/python bench/sim_guardrails.py [--experiments 2000] [--runs 200] [--seed 13]

1. False pass of the default errors guardrail (+50% relative, floored at 0.1 point) when
   the true harm is exactly at the margin, max(0.5·c, 0.001), over 20 looks of 2,500
   per-unit outcomes per arm: a "pass" at some look is a false pass. Three cases: both
   margins bind (0.2% -> 0.3%), the floor alone (0 -> 0.1%), the relative margin alone
   (2% -> 3%). Also the relative test by the delta method on the ratio (no floor), at the
   level each of the floored guardrail's two tests gets (alpha/2), for comparison.
2. A ramp step that brings errors: a 5% step of 80,000 candidate users at 0.1% errors,
   then 2% errors at 25% (600 candidate users per look), through `analyzer.analyze` in
   canary mode; and the same with no regression (A/A, 1,200 candidate users per look).
   The pooled-only policy (before the fix) is the same look's decision with the current
   epoch's guardrail results left out of the evidence.

Rates are printed with their Monte-Carlo error √(r(1 − r)/R).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from abrouter.analysis import analyzer, decision
from abrouter.analysis import data as d
from abrouter.analysis.evidence import Evidence
from abrouter.analysis.stats.noninferiority import non_inferiority
from abrouter.analysis.stats.sample import Sample
from abrouter.contract.model import AnalysisSettings

SETTINGS = dict(expected_units=10_000, variant="candidate", metric="errors", kind="binary", direction="decrease")
CASES = ((0.002, 0.003), (0.0, 0.001), (0.02, 0.03))
ERRORS = next(m for m in d.BUILTIN_METRIC_SPECS if m.name == "errors")
STEP_5 = {"control": 95.0, "candidate": 5.0}
STEP_25 = {"control": 75.0, "candidate": 25.0}
FIRST_UNITS = {"control": 1_520_000, "candidate": 80_000}
PER_LOOK = {"control": 1800, "candidate": 600}
BASE = 0.001


def show(label: str, value: str) -> None:
    print(f"   {label:<52} {value}")


def rate(hits: int, runs: int) -> str:
    r = hits / runs
    return f"{r:.4f}  (±{math.sqrt(r * (1 - r) / runs):.4f})"


def false_pass(rng: np.random.Generator, control: float, candidate: float, experiments: int) -> tuple[int, int]:
    """Experiments passed at some look: (floored default, delta-method relative at alpha/2)."""
    looks, per_look = 20, 2500
    errors = rng.binomial(per_look, [control, candidate], size=(experiments, looks, 2)).cumsum(axis=1)
    floored = delta = 0
    for run in errors:
        hit_floored = hit_delta = False
        for look, (c, t) in enumerate(run, start=1):
            a, b = Sample(look * per_look, float(c)), Sample(look * per_look, float(t))
            if not hit_floored:
                kw = dict(margin=0.5, relative=True, min_margin=0.001, alpha=0.05)
                hit_floored = non_inferiority(a, b, **kw, **SETTINGS).status == "pass"
            if not hit_delta:
                hit_delta = non_inferiority(a, b, margin=0.5, relative=True, alpha=0.025, **SETTINGS).status == "pass"
        floored += hit_floored
        delta += hit_delta
    return floored, delta


def one_request_each(rng: np.random.Generator, units: int, p: float) -> Sample:
    s = float(rng.binomial(units, p))
    return Sample(n=units, sum=s, sum_sq=s, den_sum=units, den_sum_sq=units, sum_products=s)


def experiment(first: dict[str, Sample], second: dict[str, Sample]) -> d.ExperimentData:
    arms = tuple(
        d.Arm(
            name=name,
            weight=STEP_25[name],
            strata=(
                d.Stratum(epoch=1, units=int(first[name].n), metrics={"errors": first[name]}),
                d.Stratum(epoch=2, units=int(second[name].n), metrics={"errors": second[name]}),
            ),
        )
        for name in first
    )
    epochs = (d.Epoch(1, STEP_5), d.Epoch(2, STEP_25))
    return d.ExperimentData(
        name="g", metrics=(ERRORS,), arms=arms, epochs=epochs, settings=AnalysisSettings(burn_in_s=0.0), started_at=0.0
    )


def step_25(
    rng: np.random.Generator, candidate_rate: float, *, looks: int, scale: int
) -> tuple[str, str, bool, int, int]:
    """(action, pooled-only action, pooled passed at look 1, looks to act, pooled-only looks to act)."""
    first = {name: one_request_each(rng, n, BASE) for name, n in FIRST_UNITS.items()}
    second = {name: Sample.empty(ratio=True) for name in first}
    rates = {"control": BASE, "candidate": candidate_rate}
    old, old_look, pooled_first = "continue", looks, False
    for look in range(1, looks + 1):
        second = {n: second[n] + one_request_each(rng, scale * PER_LOOK[n], rates[n]) for n in first}
        data = experiment(first, second)
        result = analyzer.analyze(data, now=1.0)
        pooled = tuple(g for g in result.guardrails if g.epoch is None)
        if look == 1:
            pooled_first = pooled[0].status == "pass"
        if old == "continue":
            evidence = Evidence(comparisons=result.comparisons, guardrails=pooled, srm=result.srm)
            old, old_look = decision.decide(data, evidence, now=1.0).action, look
        if result.decision.action != "continue":
            return result.decision.action, old, pooled_first, look, old_look
    return "continue", old, pooled_first, looks, old_look


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"1. false pass at the margin, {args.experiments} experiments x 20 looks, alpha = 0.05, seed {args.seed}")
    for control, candidate in CASES:
        floored, delta = false_pass(np.random.default_rng(args.seed), control, candidate, args.experiments)
        label = f"{control:.1%} -> {candidate:.1%}"
        print(f"   {label:<14} floored default (alpha)            {rate(floored, args.experiments)}")
        print(f"   {label:<14} delta-method relative (alpha/2)     {rate(delta, args.experiments)}")
    rng = np.random.default_rng(args.seed)
    bad = [step_25(rng, 0.02, looks=12, scale=1) for _ in range(args.runs)]
    print(f"2. errors 0.1% -> 2% at the 25% step, {args.runs} runs")
    show("rolled back at the 25% step", rate(sum(r[0] == "rollback" for r in bad), len(bad)))
    show("ramped on to 50%", rate(sum(r[0] == "ramp" for r in bad), len(bad)))
    show("pooled guardrail passed at the step's first look", rate(sum(r[2] for r in bad), len(bad)))
    show("pooled-only policy ramped on to 50%", rate(sum(r[1] == "ramp" for r in bad), len(bad)))
    show("median looks to the rollback", f"{np.median([r[3] for r in bad]):g}")
    aa = [step_25(rng, BASE, looks=40, scale=2) for _ in range(args.runs)]
    print(f"   A/A at the 25% step (40 looks of 1,200 candidate users), {args.runs} runs")
    show("false rollback", rate(sum(r[0] == "rollback" for r in aa), len(aa)))
    show("ramped on within 40 looks", rate(sum(r[0] == "ramp" for r in aa), len(aa)))
    show("median looks to the ramp", f"{np.median([r[3] for r in aa if r[0] == 'ramp']):g}")
    show("median looks to the ramp, pooled-only policy", f"{np.median([r[4] for r in aa if r[1] == 'ramp']):g}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
