"""`abrouter report`: one self-contained HTML file that shows who won and why it was safe.

Everything comes from bounded data in Redis: the aggregates (read as `analyze` reads
them) and the latency histograms for the table, and the capped decision history
(`abrouter.contract.history`) for everything over time, the per-look latency p50 and
p95 of each arm included. Plots are drawn by matplotlib (Agg) and embedded as inline SVG, so
the file needs no network to view.
"""

from __future__ import annotations

import html
import io
import math
import time
from collections.abc import Sequence
from typing import Any

from abrouter.analysis import report_text
from abrouter.analysis import secondary as secondary_of
from abrouter.analysis.analyzer import AnalysisResult
from abrouter.analysis.stats import histogram
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.stats.noninferiority import NonInferiority
from abrouter.analysis.stats.quantile import QuantileDifference
from abrouter.contract import experiment as spec
from abrouter.contract.history import DecisionEntry
from abrouter.contract.model import Guardrail


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if pct:
        return f"{x:+.2%}"
    return f"{x:,.4g}" if isinstance(x, float) else f"{x:,}"


def _num(x: float | None) -> float:
    return math.nan if x is None else x


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _legend(ax: Any) -> None:
    # An empty legend warns (e.g. no lift yet, before the first outcome): only when labelled.
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)


def plots(history: Sequence[DecisionEntry], candidate_names: Sequence[str]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = history[0].at if history else time.time()
    out: dict[str, str] = {}

    def xs(entries: Sequence[DecisionEntry]) -> list[float]:
        return [(e.at - t0) / 60 for e in entries]

    fig, ax = plt.subplots(figsize=(7, 3))
    for name in candidate_names:
        pts = [(e, a) for e in history for a in e.arms if a.name == name and a.lift is not None]
        if pts:
            x = xs([e for e, _ in pts])
            ax.plot(x, [_num(a.lift) for _, a in pts], label=f"{name} lift")
            band = [(xx, a.lift_ci) for xx, (_, a) in zip(x, pts) if a.lift_ci]
            if band:
                ax.fill_between([b[0] for b in band], [b[1][0] for b in band], [b[1][1] for b in band], alpha=0.2,
                                label=f"{name} always-valid 95% band")  # fmt: skip
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="minutes", ylabel="relative lift of the primary metric", title="Lift over time")
    _legend(ax)
    out["lift"] = _svg(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    names = sorted({a.name for e in history for a in e.arms}) or sorted({n for e in history for n in e.weights})
    for name in names:
        ax.step(xs(history), [e.weights.get(name, math.nan) for e in history], where="post", label=name)
    for e in history:
        if e.action in ("ramp", "promote", "rollback") and e.applied:
            ax.axvline((e.at - t0) / 60, color="black", ls=":", lw=0.8)
            ax.annotate(e.action, ((e.at - t0) / 60, 100), fontsize=7, rotation=90, va="top")
    ax.set(xlabel="minutes", ylabel="weight (%)", ylim=(0, 105), title="Weights, with each applied decision")
    _legend(ax)
    out["weights"] = _svg(fig)

    out["latency"] = _svg(_latency_figure(plt, history, names, xs))

    fig, ax = plt.subplots(figsize=(7, 3))
    for name in names:
        pts = [(e, a) for e in history for a in e.arms if a.name == name]
        line = ax.plot(xs([e for e, _ in pts]), [a.units for _, a in pts], label=f"{name} units")
        exp = [(e, a) for e, a in pts if a.expected_units is not None]
        ax.plot(xs([e for e, _ in exp]), [_num(a.expected_units) for _, a in exp], ls="--", color=line[0].get_color(),
                label=f"{name} expected by the split")  # fmt: skip
    ax.set(xlabel="minutes", ylabel="units", title="Units per arm against the expected split")
    _legend(ax)
    out["units"] = _svg(fig)
    return out


def _latency_figure(plt: Any, history: Sequence[DecisionEntry], names: Sequence[str], xs: Any) -> Any:
    """p50 (solid) and p95 (dashed) per arm at each look, over the look's epoch.

    History written before the quantiles existed has only the cumulative mean: then that.
    """
    fig, ax = plt.subplots(figsize=(7, 3))
    quantiles = any(a.latency_p50_ms is not None for e in history for a in e.arms)
    for name in names:
        arms = [(e, a) for e in history for a in e.arms if a.name == name]
        if not quantiles:
            pts = [(e, a) for e, a in arms if a.latency_ms is not None]
            ax.plot(xs([e for e, _ in pts]), [_num(a.latency_ms) for _, a in pts], label=f"{name} mean")
            continue
        p50 = [(e, a) for e, a in arms if a.latency_p50_ms is not None]
        p95 = [(e, a) for e, a in arms if a.latency_p95_ms is not None]
        line = ax.plot(
            xs([e for e, _ in p50]), [_num(a.latency_p50_ms) for _, a in p50], marker=".", label=f"{name} p50"
        )
        ax.plot(xs([e for e, _ in p95]), [_num(a.latency_p95_ms) for _, a in p95], ls="--", marker=".",
                color=line[0].get_color(), label=f"{name} p95")  # fmt: skip
    if quantiles:
        ax.set(xlabel="minutes", ylabel="latency (ms)", title="Latency per arm: p50 and p95 in the current epoch")
    else:
        ax.set(xlabel="minutes", ylabel="mean latency (ms)", title="Latency per arm (cumulative mean)")
    _legend(ax)
    return fig


def _latency_cell(counts: Sequence[int]) -> str:
    p50, p95 = histogram.quantile(counts, 0.5), histogram.quantile(counts, 0.95)
    return "–" if p50 is None or p95 is None else f"{p50:.3g} / {p95:.3g}"


def render(experiment: spec.Experiment, result: AnalysisResult, history: Sequence[DecisionEntry]) -> str:
    d = result.decision
    control, rest = experiment.control.name, experiment.analysis.ramp_rest
    candidates = [v.name for v in experiment.variants[1:] if v.name != rest]
    figures = plots(history, candidates)
    headline = report_text.headline(history, action=d.action, reason=d.reason, control=control, rest=rest)
    tone = (report_text.last_applied(history) or d).action
    steps = report_text.steps(history, control=control, rest=rest)
    srm = "mismatch: the split is not what the weights say" if result.srm.flagged else "ok"
    variants = "".join(_variant(v, control=control, rest=rest) for v in experiment.variants)
    metrics = "".join(f"<li>{html.escape(m.name)} ({m.kind}, {m.direction})</li>" for m in experiment.metrics)
    a = experiment.analysis
    policy = (
        f"alpha {a.alpha:g}, at least {a.min_units_per_arm} units per arm, ramp {list(a.ramp)}, "
        f"SRM alpha {a.srm_alpha:g}, guardrails: "
        + "; ".join(f"{g.metric} {g.direction}, {_margin(g)}" for g in a.guardrails)
        + (f"; slow_requests: slower than {experiment.slow_request_s:g} s" if experiment.slow_request_s else "")
    )
    decisions = "".join(
        f"<tr><td>{time.strftime('%H:%M:%S', time.gmtime(e.at))}</td><td>{e.action}</td>"
        f"<td>{'yes' if e.applied else 'no'}</td><td>{html.escape(e.reason)}</td></tr>"
        for e in history
        if e.action != "continue" or e is history[-1]
    )
    applied = f"Applied, in order: {html.escape(steps)}." if steps else "No decision has changed the weights yet."
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>abrouter report: {html.escape(experiment.name)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:90%}}
.headline{{font-size:130%;padding:1em;background:#f4f4f4;border-left:6px solid #888}}
.promote{{background:#eef6ee;border-color:#393}}.rollback{{background:#fbeeee;border-color:#c33}}</style></head>
<body>
<h1>Experiment {html.escape(experiment.name)}</h1>
<section id="summary"><p class="headline {tone}">{html.escape(headline)}</p>
<p>{applied} Sample ratio: {srm}. Decisions use always-valid sequential tests, so looking at every step did not
inflate false promotions.</p></section>
<section id="experiment"><h2>The experiment</h2><p>{html.escape(_match(experiment.match))}</p>
<ul>{variants}</ul><p>Metrics (the first is primary):</p>
<ul>{metrics}</ul><p>Policy: {html.escape(policy)}</p></section>
{_arms(experiment, result)}
{_trends(result)}
{_guardrails(result)}
{_shadows(result)}
<section id="plots"><h2>Over time</h2>
<figure id="plot-lift">{figures["lift"]}</figure>
<figure id="plot-weights">{figures["weights"]}</figure>
<figure id="plot-latency">{figures["latency"]}</figure>
<figure id="plot-units">{figures["units"]}</figure></section>
<section id="history"><h2>Decision history</h2><table><tr><th>time (UTC)</th><th>action</th><th>applied</th>
<th>reason</th></tr>{decisions}</table></section>
{_details(result)}
</body></html>
"""


def _variant(v: spec.Variant, *, control: str, rest: str | None = None) -> str:
    """One variant as the report lists it: where it is served, under which model name, its weight."""
    role = " (control)" if v.name == control else f" (shadow of {v.shadow_percent:g}% of units)" if v.shadow else ""
    role = " (the control's model outside the comparison: balanced ramp)" if v.name == rest else role
    served = [v.upstream] + ([f"gRPC {v.grpc_upstream}"] if v.grpc_upstream else [])
    model = f", model {v.model!r}" if v.model else ""
    return f"<li><b>{html.escape(v.name)}</b>{role}: {html.escape(', '.join(served) + model)}, weight {v.weight:g}</li>"


def _match(match: spec.Match) -> str:
    """Which requests the experiment takes (its `match:`), in words."""
    if match.is_everything:
        return "Requests: every request the router receives (no match:)."
    parts = [f"model {match.model!r}"] if match.model else []
    parts += [f"path {match.path!r}"] if match.path else []
    parts += [f"host {match.host!r}"] if match.host else []
    parts += [f"header {name}: {value!r}" for name, value in match.headers]
    return "Requests: those with " + ", ".join(parts) + "."


def _cells(values: Sequence[Any]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in values) + "</tr>"


def _head(names: Sequence[str]) -> str:
    return "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in names) + "</tr>"


def _arms(experiment: spec.Experiment, result: AnalysisResult) -> str:
    """Per arm: one p per comparison, the one a promotion is decided on, and what it means."""
    rows = []
    for arm in result.data.arms:
        c, mean = result.primary_of(arm.name)
        rows.append(_cells((
            arm.name, f"{arm.weight:.1f}%", _fmt(arm.units), _fmt(arm.exposures), _fmt(mean),
            _fmt(c.relative_lift, pct=True) if c else "–",
            _interval(c.sequential_ci) if c else "–",
            _fmt(result.holm.get(arm.name, math.nan)) if c else "–",
            _latency_cell(histogram.merge(arm.latency.values())),
        )))  # fmt: skip
    header = ("arm", "weight", "units", "exposures", f"{result.primary} mean", "lift", "always-valid 95% CI",
              "p to promote (this look, Holm)", "latency p50 / p95 (ms)")  # fmt: skip
    alpha, primary = experiment.analysis.alpha, html.escape(result.primary or "the primary metric")
    return f"""<section id="arms"><h2>Arms</h2><table>{_head(header)}{"".join(rows)}</table>
<p><b>p to promote</b>: this look's one-sided always-valid p that the candidate beats the control on
{primary}, Holm-adjusted over the candidates; a candidate is promoted when it is below alpha
{alpha:g} and its guardrails pass. The interval is always-valid too: it holds however often the analyzer looked.
The other p-values and intervals are under <a href="#details">details</a>.</p>
{_cuped_note(experiment, result)}</section>"""


_TREND_WORDS = {
    "declined": "Novelty suspected",
    "grew": "Time trend: the effect strengthened",
    "stable": "Stable",
    "not_checked": "Not checked yet",
}


def _trends(result: AnalysisResult) -> str:
    """[novelty] Whether the primary metric's effect changed over time, per active candidate, in words."""
    if not result.trends:
        return ""
    items = "".join(
        f"<li><b>{html.escape(_TREND_WORDS[t.status])}</b>: {html.escape(t.message)}.</li>" for t in result.trends
    )
    return f"""<section id="trends"><h2>Effect over time</h2>
<p>The data a promotion rests on (the final ramp step's) is split at an earlier look, about half-way in time, and the
effect before it is compared with the effect since (absolute differences, candidate minus control). An effect that
fades is what a novelty effect looks like, and holds a promotion; one that strengthens is a trend the tests average
away.</p><ul>{items}</ul></section>"""


def _guardrails(result: AnalysisResult) -> str:
    """Each guardrail of this look beside its margin, with its result in words."""
    rows = "".join(_cells(_guardrail_row(g)) for g in result.guardrails)
    header = ("guardrail", "variant", "tolerated harm", "harm (this look)", "result")
    table = f"<table>{_head(header)}{rows}</table>" if rows else "<p>No guardrail was tested at this look.</p>"
    skipped = ", ".join(result.skipped_guardrails)
    return f"""<section id="guardrails"><h2>Guardrails</h2>
<p>A candidate may be worse than the control by at most the tolerated harm. Harm is measured in the metric's bad
direction (positive: worse), with an always-valid one-sided bound.</p>{table}
{f"<p>Skipped (no data): {html.escape(skipped)}.</p>" if skipped else ""}
{_latency_p95(result)}</section>"""


def _latency_p95(result: AnalysisResult) -> str:
    """Beside the latency guardrail (the mean per user): the tail, each candidate's p95 against the control's."""
    if not result.latency_p95:
        return ""
    rows = "".join(_cells(_latency_row(d)) for d in result.latency_p95)
    first = result.latency_p95[0]
    header = ("variant", "control p95 (ms)", "candidate p95 (ms)", "difference (ms)",
              f"{1 - result.data.settings.alpha:.0%} interval (ms)", "relative", "relative interval")  # fmt: skip
    return f"""<h3 id="latency-p95">Latency p95</h3>
<p>The 95th percentile of the requests each arm served in the current epoch ({first.epoch}), read from the router's
latency histograms. Their buckets are {first.resolution:.0%} wide, so a percentile is known only to within its bucket:
the interval adds what the buckets hide to the sampling error. Requests count as independent; one look, for
information (the guardrail above is on each user's mean latency).</p><table>{_head(header)}{rows}</table>"""


def _latency_row(d: QuantileDifference) -> list[str]:
    if d.status != "ok":
        return [d.variant, "–", "–", "–", f"insufficient data: {d.reason}", "–", "–"]
    return [d.variant, _fmt(d.control_ms), _fmt(d.candidate_ms), f"{d.difference_ms:+,.4g}",
            f"{d.ci_ms[0]:+,.4g} .. {d.ci_ms[1]:+,.4g}", _fmt(d.relative, pct=True),
            _interval(d.relative_ci)]  # fmt: skip


def _shadows(result: AnalysisResult) -> str:
    """[shadow] Each shadow's replies to the copies of the control's requests, and its guardrails."""
    if not result.shadows:
        return ""
    rows = "".join(
        _cells((s.name, f"{s.percent:g}%", _fmt(s.units), _fmt(s.copies), _share(s.errors), _fmt(s.latency_ms),
                _share(s.agreement), "pass" if s.healthy else "not yet"))
        for s in result.shadows
    )  # fmt: skip
    header = ("shadow", "units copied", "units", "copies", "errors", "latency mean (ms)", "agreement", "guardrails")
    rails = "".join(_cells(_guardrail_row(g)) for s in result.shadows for g in s.guardrails)
    rails_head = _head(("guardrail", "shadow", "tolerated harm", "harm (this look)", "result"))
    return f"""<section id="shadows"><h2>Shadows</h2>
<p>A shadow answers no user: it gets a copy of the control's requests once they are answered. Agreement is the share
of copies it answered with the control's status and body. Once its guardrails pass, the policy makes it a live
candidate at the first ramp step.</p><table>{_head(header)}{rows}</table>
{f"<table>{rails_head}{rails}</table>" if rails else ""}</section>"""


def _share(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.1%}"


def _guardrail_row(g: NonInferiority) -> list[str]:
    name = g.metric if g.epoch is None else f"{g.metric} (epoch {g.epoch} alone)"
    return [name, g.variant, report_text.margin(g), report_text.harm(g), report_text.result(g)]


def _details(result: AnalysisResult) -> str:
    """Every comparison's statistics, for whoever wants them all."""
    method = result.data.settings.secondary_correction
    adjusted = dict(result.secondary)
    rows = "".join(
        _cells(_detail_row(c, primary=result.primary or "", adjusted=adjusted if adjusted else None))
        for c in result.comparisons
        if c.status == "ok"
    )
    header = ["metric", "variant", "lift", "95% CI (fixed horizon)", "fixed-horizon p", "sequential p (lowest so far)",
              "always-valid 95% CI", "chance to beat control", "expected loss"]  # fmt: skip
    if adjusted:
        header.insert(6, f"sequential p, {secondary_of.SHORT_NAMES[method]}-adjusted over the secondary metrics")
    note = f"<p>{html.escape(secondary_of.describe(method, len(adjusted)))}.</p>" if adjusted else ""
    return f"""<details id="details"><summary>Details: every comparison</summary>
<p><b>fixed-horizon p</b> and its CI are the classic two-sided test, valid only if this were the only look.
<b>sequential p</b> is the always-valid p, the lowest over all looks so far. <b>chance to beat control</b> and
<b>expected loss</b> are Bayesian, under a flat prior. Decisions use only the always-valid numbers.</p>{note}
<table>{_head(header)}{rows}</table></details>"""


def _detail_row(c: Comparison, *, primary: str, adjusted: dict[tuple[str, str], float] | None = None) -> list[str]:
    """One comparison's cells; with `adjusted` (the secondary correction on), its adjusted p after the sequential p."""
    cells = [
        c.metric + (" (primary)" if c.metric == primary else ""),
        c.variant,
        _fmt(c.relative_lift, pct=True),
        _interval(c.relative_ci),
        _fmt(c.p_value),
        _fmt(c.sequential_p_value),
        _interval(c.sequential_ci),
        f"{c.chance_to_beat:.1%}" if math.isfinite(c.chance_to_beat) else "–",
        _fmt(c.expected_loss),
    ]
    if adjusted is not None:
        cells.insert(6, _fmt(adjusted.get((c.variant, c.metric), math.nan)))
    return cells


def _interval(pair: Sequence[float]) -> str:
    return f"{_fmt(pair[0], True)} .. {_fmt(pair[1], True)}"


def _margin(g: Guardrail) -> str:
    """The tolerated harm in words: "margin 50% of the control (at least 0.001)" or "margin 0.02"."""
    if not g.relative:
        return f"margin {g.margin:g}"
    floor = f" (at least {g.min_margin:g})" if g.min_margin else ""
    return f"margin {g.margin:.0%} of the control{floor}"


def _cuped_note(experiment: spec.Experiment, result: AnalysisResult) -> str:
    """Which comparisons CUPED adjusted, and by how much it cut their variance ("" if none)."""
    adjusted = [c for c in result.comparisons if c.cuped]
    if not adjusted:
        return ""
    if len(experiment.covariates) > 1:  # [regression] which covariates adjusted each comparison
        items = ", ".join(
            f"{c.metric} for {c.variant} by {' + '.join(_adjusted_by(experiment, c.metric))} "
            f"{-c.variance_reduction:+.1%}"
            for c in adjusted
        )
        names = ", ".join(f"<b>{html.escape(n)}</b>" for n in experiment.covariates)
        return (
            f"<p>CUPED: means, lifts and tests are adjusted by regression on the pre-exposure covariates "
            f"{names} (ratios by the first); variance change: {html.escape(items)}.</p>"
        )
    items = ", ".join(f"{c.metric} for {c.variant} {-c.variance_reduction:+.1%}" for c in adjusted)
    return (
        f"<p>CUPED: means, lifts and tests are adjusted by the pre-exposure covariate "
        f"<b>{html.escape(experiment.covariate or '')}</b>; variance change: {html.escape(items)}.</p>"
    )


def _adjusted_by(experiment: spec.Experiment, metric: str) -> tuple[str, ...]:
    """[regression] The covariates that adjust `metric`: all of them, a ratio's the first only."""
    ratio = any(m.name == metric and m.is_ratio for m in experiment.metrics)
    return experiment.covariates[:1] if ratio else experiment.covariates
