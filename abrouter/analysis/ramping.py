"""The ramp rule (rule 7 of `decision`): when the candidates move to the next step, and to what weights.

Pure. A step waits for `min_units_per_arm` per active arm in the current epoch, the
guardrails at the step's margins (`evidence.step_scale`), pooled and in this epoch, and,
for the step into the final one, the burn-in. The candidates' total share goes to the next
step of `ramp`, split evenly between the active candidates; the control takes the rest,
or, with a balanced ramp (`ramp_rest`), each candidate's share, and the rest variant what
is left (`weights`).
"""

from __future__ import annotations

from abrouter.analysis import explain
from abrouter.analysis.look import FULL, Decision, Look


def ramp(look: Look) -> Decision | None:
    """The next ramp step, or None when this look does not move."""
    step = next_step(look)
    if step is None or not look.enough_units(epoch=look.data.current_epoch):
        return None
    if held_by_burn_in(look):
        return None  # the burn-in stays in the canary epochs, which a promotion does not count
    if not all(step_guardrails_pass(look, n) for n in look.candidates):
        return None
    if look.data.primary is None and not all(look.evidence.guardrails_of(n) for n in look.candidates):
        return None  # canary mode: without guardrail data there is no evidence to ramp on either
    why = f"guardrails pass at {explain.number(look.share)}%: candidates to {explain.number(step)}% in total"
    return look.say("ramp", why, weights(look, step))


def weights(look: Look, step: float) -> dict[str, float]:
    """The weights at `step` (the candidates' total share, percent), split evenly between them.

    Balanced (`ramp_rest` set): the control gets each candidate's share, so every step
    compares arms of one size (GrowthBook's Safe Rollouts), and the rest variant, which
    serves the control's model outside the comparison, gets what is left. Raising the
    control and the candidates by one factor moves no unit between them under the router's
    rendezvous hashing (`abrouter.router.assignment`): new units come from the rest.
    """
    each = step / len(look.candidates)
    out = {a.name: 0.0 for a in look.data.arms} | {n: each for n in look.candidates}
    rest = look.data.rest
    if rest is None:
        return out | {look.data.control.name: FULL - step}
    control = min(each, FULL - step)
    return out | {look.data.control.name: control, rest.name: FULL - step - control}


def next_step(look: Look) -> float | None:
    return next((s for s in look.data.settings.ramp if s > look.share + look.tolerance), None)


def held_by_burn_in(look: Look) -> bool:
    """The burn-in holds this look's next move: the step into the final one, or (without a ramp) the promotion."""
    if look.ramp_done():
        return look.burning_in(final=True)
    return next_step(look) == look.data.settings.ramp[-1] and look.burning_in()


def after_burn_in(look: Look) -> str:
    return "the final ramp step" if look.ramped else "a promotion"


def step_guardrails_pass(look: Look, name: str) -> bool:
    """The guardrails pass at the current ramp step's margins (`evidence.step_scale`), pooled and in this epoch."""
    return all(g.status == "pass" for g in look.evidence.ramp_guardrails_of(name))
