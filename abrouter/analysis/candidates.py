"""The candidates the decision policy weighs, and which evidence of theirs counts.

Pure: the active candidates, the Holm-adjusted primary p per candidate at this look, and
the epochs a promotion may rest on (the final ramp step's).
"""

from __future__ import annotations

import math

from abrouter.analysis.data import Arm, ExperimentData
from abrouter.analysis.evidence import Evidence
from abrouter.analysis.stats import reasons
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.stats.multiple import holm
from abrouter.analysis.weights import EPS, WEIGHT_DECIMALS


def holm_primary(data: ExperimentData, evidence: Evidence) -> dict[str, float]:
    """Holm-adjusted p of this look (good direction, `p_better_now`) of the primary metric per active candidate.

    Holm over this look's p's is valid at any stopping time: each is a valid p there,
    since P(p <= x at some look) <= x (`stats.horizon`).

    The family is every candidate of the experiment, rolled-back ones included: rolling
    one back must not loosen the others' threshold. A candidate without a usable p counts
    in the family with p = 1.
    """
    family = [a.name for a in data.candidates]
    active = {a.name for a in active_candidates(data)}
    raw = [p_better(evidence.primary(data, name)) for name in family]
    adjusted = holm([p if math.isfinite(p) else 1.0 for p in raw])
    return {name: (a if math.isfinite(p) else math.nan) for name, p, a in zip(family, raw, adjusted) if name in active}


def confirmation_start(data: ExperimentData) -> int:
    """Index (in `data.epochs`) of the first epoch whose data a promotion may rest on.

    With a ramp, the trailing run of epochs in which the candidates together had the final
    step's share: the earlier steps are a canary phase (guardrails, harm), and the primary
    metric's evidence for a promotion is gathered at full exposure. An early novelty effect
    (users trying a new recommender) that has faded by then cannot carry a promotion,
    which evidence pooled from the first epochs could (issue 9, defect 5; simulated in
    tests/analysis/test_simulation_decisions.py). `len(data.epochs)` while the current epoch
    is below the final step (no evidence yet). Without a ramp, and in bandit mode, every
    epoch counts (0).
    """
    ramp = data.settings.ramp
    if data.settings.bandit.enabled or not ramp:
        return 0
    tolerance = (len(data.candidates) + 1) * 10**-WEIGHT_DECIMALS
    names, start = {a.name for a in data.candidates}, len(data.epochs)
    while start > 0:
        weights = data.epochs[start - 1].weights
        share = sum(w for name, w in weights.items() if name in names)
        if not weights or share < ramp[-1] - tolerance:
            break
        start -= 1
    return start


def active_candidates(data: ExperimentData) -> tuple[Arm, ...]:
    """Candidates still receiving traffic; a rolled-back one (weight 0) is out of the game."""
    return tuple(a for a in data.candidates if a.weight > EPS)


def p_better(c: Comparison | None) -> float:
    """This look's one-sided p of the decision design that the candidate is better."""
    if c is None or c.status != reasons.OK:
        return math.nan
    return c.p_better_now


def p_worse(c: Comparison | None) -> float:
    """Running-minimum sequential p over the looks where the candidate was worse."""
    if c is None or c.status != reasons.OK:
        return math.nan
    return c.sequential_p_worse
