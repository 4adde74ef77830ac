"""The decision policy: from the evidence to continue, ramp, promote, rollback or stop.

A purely computational module: no I/O, no clock, no global randomness. Time (`now`) and
the random generator (bandit mode) are arguments, so every branch can be tested with
constructed inputs. `docs/analyzer.md` states the policy for users; the rules, in the
order they are tried:

1. finished: no candidate has traffic -> stop; a candidate has all of it and either an
   earlier look promoted it (`promoted`, from the decision history) or the promote rule
   (3) would promote it now -> promote; both with the weights unchanged, so re-running is
   idempotent. A promotion is not re-tested on the data after it: the control's returning
   users are then served the candidate and, intent-to-treat, move the control's sums
   toward it, so a borderline win would drift above alpha and turn into a stop. A
   candidate at 100% that no look promoted (a hand edit) is never reported as promoted:
   rollback if rule 2 applies, else stop with the weights unchanged (the control gets no
   more data to compare with);
2. rollback: a guardrail breach, or significant harm on the primary metric by the
   sequential test in the harmful direction (`sequential_p_worse`, unadjusted: protecting
   users needs no multiplicity correction) once every active arm has
   `min_units_per_arm` -> that candidate to 0, its share to the control; SRM does not
   block a rollback, which only makes things safer;
3. promote (not while SRM is flagged): the primary metric wins *at this look* by the
   one-sided decision design in the good direction (`p_better_now`, `stats.horizon`: a
   boundary that spends alpha on information time up to `expected_units_per_arm`),
   Holm-adjusted across every candidate of the experiment (rolled-back ones included, so
   a rollback does not loosen the others' threshold). Not a running minimum: evidence
   from an early look (a novelty effect since faded) cannot promote later. The
   candidate's guardrails pass (canary mode: at least one guardrail was evaluated and all
   pass, over all epochs and in the current epoch alone); the effect has not declined
   significantly over time (`decline_p` >= alpha, `stats.stability`: a fading novelty
   effect holds the promotion, and the reason line says so); every active arm has
   `min_units_per_arm`; the ramp is complete (without a ramp, and in bandit mode:
   `burn_in` has passed since the start) -> the best winner to 100;
4. stop: `max_duration` has passed without a winner -> control 100;
5. SRM flagged -> continue with the weights unchanged (an SRM is often transient, e.g. a
   weight change still propagating; the reason line alerts the operator);
6. bandit mode: Thompson weights (P(best) from posteriors stratified by epoch) once every
   active arm has `bandit.min_units`; a candidate whose guardrails do not pass (over all
   epochs and in the current one) gains no weight (it keeps its current weight, or the
   floor if lower);
7. ramp: every active arm has `min_units_per_arm` units in the current epoch, and the
   guardrails pass at the step's margins (the margin times final share / current share,
   `evidence.step_scale`: the harm to the whole traffic stays within the final step's;
   canary mode: and were evaluated) both over all epochs and on the current epoch alone,
   so a regression that appears at this step is not diluted by the earlier ones (a
   breach there rolls back by rule 2, not yet passing holds the ramp); the step into the
   final one also waits until `burn_in` has passed since the start, so the burn-in's
   users stay in canary epochs that a promotion does not count ->
   the candidates' total share goes to the next step of `ramp`, split evenly between the
   active candidates (largest-remainder rounding, so the weights sum to exactly 100); with
   a balanced ramp (`ramp_rest`) the control gets each candidate's share and the rest
   variant the remainder (`ramping`);
8. otherwise continue.
"""

from __future__ import annotations

import math

import numpy as np

from abrouter.analysis import explain, ramping
from abrouter.analysis.candidates import holm_primary, p_worse
from abrouter.analysis.data import ExperimentData, stat_kind
from abrouter.analysis.evidence import Evidence
from abrouter.analysis.look import FULL, Action, Decision, Look
from abrouter.analysis.stats import reasons
from abrouter.analysis.stats.bandit import thompson_weights
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.stats.noninferiority import NonInferiority
from abrouter.analysis.weights import EPS, max_change

__all__ = ["Action", "Decision", "decide"]

#: Bandit weights move only when some arm would move by at least this many points:
#: every weight change opens a new epoch (a new stratum), and many tiny strata waste data
#: on Monte-Carlo noise.
BANDIT_MIN_CHANGE = 5.0


def decide(
    data: ExperimentData,
    evidence: Evidence,
    *,
    now: float,
    rng: np.random.Generator | None = None,
    promoted: str | None = None,
) -> Decision:
    """Apply the policy (module docstring) to one look. Bandit mode needs `rng`.

    `promoted`: the candidate an earlier look promoted (the history's latest decision), if any.
    """
    look = Look(data=data, evidence=evidence, now=now, promoted=promoted)
    for rule in (_finished, _rollback, _promote, _stop, _srm_hold):
        decision = rule(look)
        if decision is not None:
            return decision
    if data.settings.bandit.enabled and data.primary is not None:
        if rng is None:
            raise ValueError("bandit mode needs a random generator (rng)")
        return _bandit(look, rng)
    return ramping.ramp(look) or _continue(look)


# ------------------------------------------------------------------------ rules


def _finished(look: Look) -> Decision | None:
    if not look.candidates:
        return look.say("stop", "no candidate receives traffic (rolled back or stopped)")
    full = _at_full(look)
    if full is None:
        return None
    if full == look.promoted:  # decided at the look that promoted it, not re-tested on what followed
        return _rollback(look) or look.say(
            "promote", f"{full} already has 100% of traffic (promoted at an earlier look)"
        )
    # 100% is "promoted" only when the promote rule itself would choose it: a hand edit,
    # or a bandit of an older version with a floor of 0, could get there without the
    # sequential test, Holm, SRM and the minimum units (issue 9, defect 4).
    promotion = _promote(look)
    if promotion is not None and promotion.weights.get(full, 0.0) >= FULL - EPS:
        return look.say("promote", f"{full} already has 100% of traffic")
    why = f"{full} has 100% of traffic but was not promoted by the policy: the control gets no data to compare"
    return _rollback(look) or look.say("stop", why)


def _at_full(look: Look) -> str | None:
    """The candidate that has all the traffic, if one has."""
    return next((n for n in look.candidates if look.data.arm(n).weight >= FULL - EPS), None)


def _rollback(look: Look) -> Decision | None:
    harmed = {name: why for name in look.candidates if (why := _harm(look, name))}
    if not harmed:
        return None
    weights, control, rest = dict(look.data.weights), look.data.control.name, look.data.rest
    for name in harmed:
        weights[control] += weights[name]
        weights[name] = 0.0
    if rest is not None and set(harmed) == set(look.candidates):  # nothing left to balance
        weights[control], weights[rest.name] = weights[control] + weights[rest.name], 0.0
    why = "; ".join(f"{name}: {why}" for name, why in harmed.items())
    return look.say("rollback", why, weights)


def _harm(look: Look, name: str) -> str | None:
    """Why `name` must be rolled back, or None."""
    for g in look.evidence.guardrails_of(name):
        if g.status == "breach":
            return f"guardrail {explain.breach(g)}"
    c = look.evidence.primary(look.data, name)
    if c is None or c.status != reasons.OK or not p_worse(c) < look.alpha or look.good(c):
        return None
    if not look.enough_units():  # a tiny arm (e.g. 0 of 50 converting) is no evidence of harm
        return None
    return f"significant harm on {c.metric} ({explain.harm_p(p_worse(c))})"


def _promote(look: Look) -> Decision | None:
    if look.evidence.srm.flagged:
        return None
    if look.data.primary is None and not all(look.evidence.guardrails_of(n) for n in look.candidates):
        return None  # canary mode: every candidate needs guardrail evidence first
    winners = [name for name in look.candidates if _wins(look, name)]
    if not winners or not look.enough_units() or not look.ramp_done() or look.burning_in(final=True):
        return None
    best = max(winners, key=lambda name: _score(look, name))
    weights = {a.name: (FULL if a.name == best else 0.0) for a in look.data.arms}
    return look.say("promote", f"{best} wins{_primary_note(look)}{_win_p(look, best)} and its guardrails pass", weights)


def _win_p(look: Look, name: str) -> str:
    """`` (this look's one-sided p=0.012, Holm)``: the evidence the promotion rests on."""
    if look.data.primary is None:
        return ""
    adjusted = holm_primary(look.data, look.evidence).get(name, math.nan)
    return f" (this look's one-sided p={explain.p(adjusted)}, Holm)"


def _wins(look: Look, name: str) -> bool:
    if not look.guardrails_pass(name):
        return False
    c = look.evidence.primary(look.data, name)
    if look.data.primary is None:
        # canary mode: no outcome metric, the guardrails alone decide; they must have been
        # evaluated (no guardrail data at all is no evidence).
        return bool(look.evidence.guardrails_of(name))
    adjusted = holm_primary(look.data, look.evidence).get(name, math.nan)
    return c is not None and c.status == reasons.OK and adjusted < look.alpha and look.good(c) and not _fading(c, look)


def _fading(c: Comparison, look: Look) -> bool:
    """Novelty suspected: the effect declined significantly from the first part of the design's data to the rest."""
    return c.decline_p < look.alpha


def _score(look: Look, name: str) -> float:
    """How good a winner is: its lift in the metric's good direction."""
    c = look.evidence.primary(look.data, name)
    if c is None:
        return 0.0
    return c.absolute_lift if look.increase else -c.absolute_lift


def _stop(look: Look) -> Decision | None:
    started = look.data.started_at
    limit = look.data.settings.max_duration_s
    if started is None or look.now - started < limit:
        return None
    weights = {a.name: 0.0 for a in look.data.arms} | {look.data.control.name: FULL}
    return look.say("stop", f"max_duration {explain.duration(limit)} reached without a winner", weights)


def _srm_hold(look: Look) -> Decision | None:
    if not look.evidence.srm.flagged:
        return None
    return look.say("continue", "sample ratio mismatch: holding weights, check assignment and logging")


def _bandit(look: Look, rng: np.random.Generator) -> Decision:
    data, bandit = look.data, look.data.settings.bandit
    short = [n for n in look.active if data.arm(n).units < bandit.min_units]
    if short:
        return look.say("continue", f"bandit waits for {bandit.min_units} units per arm ({', '.join(short)} below)")
    metric = data.primary
    assert metric is not None  # `decide` checks
    # Per-epoch strata, not pooled: the bandit's own weight changes open the epochs, and a
    # time trend across them would otherwise favour whichever arm had traffic late.
    samples = {n: data.samples(n, metric.name) for n in look.active}
    drawn = thompson_weights(samples, kind=stat_kind(metric), direction=metric.direction, floor=bandit.floor, rng=rng)
    weights = {a.name: 0.0 for a in data.arms} | {n: FULL * w for n, w in drawn.items()}
    weights = _hold_unproven(look, weights)
    held = [n for n in look.candidates if not look.guardrails_pass(n)]
    note = f" ({', '.join(held)} held: guardrails not yet shown to pass)" if held else ""
    # An arm below the floor (a hand edit, or an older version's floor of 0) is lifted to
    # it whatever the change: an arm without traffic gathers no evidence.
    lifted = any(data.arm(n).weight < FULL * bandit.floor - EPS for n in look.active)
    if max_change(weights, data.weights) < BANDIT_MIN_CHANGE and not lifted:
        return look.say("continue", f"bandit weights within {BANDIT_MIN_CHANGE:g} points of the current ones{note}")
    return look.say("ramp", f"bandit: weights = P(best) with floor {FULL * bandit.floor:g}%{note}", weights)


def _hold_unproven(look: Look, weights: dict[str, float]) -> dict[str, float]:
    """A candidate whose guardrails do not pass gains no bandit weight.

    It keeps its current weight, or the floor if lower; the difference goes to the other
    arms in proportion to their drawn weights.
    """
    floor = FULL * look.data.settings.bandit.floor
    capped = {
        n: min(weights[n], max(look.data.arm(n).weight, floor)) for n in look.candidates if not look.guardrails_pass(n)
    }
    freed = sum(weights[n] - w for n, w in capped.items())
    if freed <= EPS:
        return weights
    others = [n for n in look.active if n not in capped]
    total = sum(weights[n] for n in others)
    out = dict(weights) | capped
    for n in others:
        out[n] += freed * (weights[n] / total if total > EPS else 1.0 / len(others))
    return out


def _continue(look: Look) -> Decision:
    return look.say("continue", _waiting_for(look))


def _waiting_for(look: Look) -> str:
    """The first thing that stands between this look and the next action."""
    settings, epoch = look.data.settings, look.data.current_epoch
    step_units = f"waiting for {settings.min_units_per_arm} units per arm in epoch {epoch} before the next ramp step"
    if not look.enough_units():
        return f"waiting for {settings.min_units_per_arm} units per arm"
    rails = look.evidence.ramp_guardrails_of if not look.ramp_done() else look.evidence.guardrails_of
    failing = [g for n in look.candidates for g in rails(n) if g.status != "pass"]
    if pooled := [g for g in failing if g.epoch is None]:
        return f"guardrails not yet shown to pass ({_states(pooled)})"
    if look.data.primary is None and not all(look.evidence.guardrails_of(n) for n in look.candidates):
        return "no guardrail data yet"
    if not look.ramp_done() and not look.enough_units(epoch=epoch):
        return step_units
    if ramping.held_by_burn_in(look):
        return f"burn-in: {explain.duration(settings.burn_in_s)} from the start before {ramping.after_burn_in(look)}"
    if failing:  # the current epoch's own results: a regression may start at this step
        return f"guardrails not yet shown to pass in the current epoch {epoch} alone ({_states(failing)})"
    if not look.ramp_done():
        return step_units
    if fading := [c for n in look.candidates if (c := look.evidence.primary(look.data, n)) and _fading(c, look)]:
        return "; ".join(explain.novelty(c) for c in fading)
    return "no significant difference yet"


def _states(rails: list[NonInferiority]) -> str:
    return ", ".join(f"{g.variant} {g.metric} {g.reason or g.status}" for g in rails)


def _primary_note(look: Look) -> str:
    return f" on {look.data.primary.name}" if look.data.primary is not None else " (canary: guardrails only)"
