"""A fixed-width report of one look, for the terminal.

Pure formatting of an `AnalysisResult`; the JSON output (`AnalysisResult.to_dict`) is
the machine-readable twin. The primary metric is starred; lifts and intervals are relative (delta method), "seq"
columns come from the always-valid sequential test that the decision uses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence, Set

from abrouter.analysis import explain
from abrouter.analysis import secondary as secondary_of
from abrouter.analysis.analyzer import AnalysisResult
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.stats.noninferiority import NonInferiority
from abrouter.analysis.stats.quantile import QuantileDifference


def render(result: AnalysisResult) -> str:
    sections = [
        _header(result),
        _variants(result),
        _comparisons(result),
        _guardrails(result),
        _shadows(result),
        _decision(result),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(r: AnalysisResult) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(r.at))
    line = f"experiment {r.experiment}  epoch {r.epoch}  {stamp}  {explain.srm_text(r.srm)}"
    if r.ignored_settings:
        s = r.data.settings
        edits = ", ".join(f"{k} {v:g}" for k, v in r.ignored_settings.items())
        line += (
            f"\npinned at the first look: alpha {s.alpha:g}, expected_units_per_arm {s.expected_units_per_arm}; "
            f"the spec's {edits} is ignored (start a new experiment to change them)"
        )
    if r.data.incomplete_since is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(r.data.incomplete_since))
        line += (
            f"\nDATA INCOMPLETE: Redis lost the data recorded before {since} (it restarted empty); "
            "this look sees only what came after, not the whole experiment"
        )
    if r.data.lost_between is not None:
        start, end = (time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t)) for t in r.data.lost_between)
        line += (
            f"\nDATA INCOMPLETE: Redis lost {r.data.lost_events} events flushed between {start} and {end} "
            "(it came back with older data); this look does not see them"
        )
    if r.data.inconsistent:
        line += "\nDATA INCONSISTENT (clamped, the look goes on): " + "; ".join(r.data.inconsistent)
    return line


def _variants(r: AnalysisResult) -> str:
    rows = [
        [
            a.name,
            f"{a.weight:.2f}%",
            f"{a.units:d}",
            f"{r.srm.expected.get(a.name, math.nan):.0f}",
            f"{a.exposures:d}",
            f"{a.multiple_exposures:d}",
        ]
        for a in r.data.arms
    ]
    head = ["variant", "weight", "units", "expected", "exposures", "multiple"]
    lines = [table(head, rows, right={1, 2, 3, 4, 5})]
    if any(a.multiple_exposures for a in r.data.arms):
        policy = r.data.settings.multiple_exposures
        lines.append(
            "multiple: units also exposed to another variant later; "
            + (
                "left out of every estimate (multiple_exposures: exclude)"
                if policy == "exclude"
                else "kept in the variant of their first exposure (intent-to-treat)"
            )
        )
    return "\n".join(lines)


def _comparisons(r: AnalysisResult) -> str:
    if not r.comparisons:
        return ""
    rows = [_comparison_row(r, c) for c in r.comparisons]
    head = [
        "metric",
        "variant",
        "control",
        "mean",
        "lift",
        "CI (fixed)",
        "p",
        "seq p",
        "seq CI",
        "P(beat)",
        "E[loss]",
        "note",
    ]
    lines = [table(head, rows, right=set(range(2, 11)))]
    if any(c.cuped for c in r.comparisons):  # [cuped]
        lines.append(
            "CUPED: adjusted by the pre-exposure covariate; means are adjusted means, "
            "CUPED var is the change of the lift's variance (1 - V_adjusted / V)"
        )
    lines.extend(f"effect over time: {t.message}" for t in r.trends if t.status in ("declined", "grew"))
    if r.secondary:
        lines.append(secondary_of.describe(r.data.settings.secondary_correction, len(r.secondary)))
    if r.omnibus:
        tests = ", ".join(f"{m} p={explain.p(p)}" for m, p in r.omnibus.items())
        lines.append(f"chi-square over all arms (fixed horizon): {tests}")
    return "\n".join(lines)


def _comparison_row(r: AnalysisResult, c: Comparison) -> list[str]:
    name = c.metric + (" *" if c.metric == r.primary else "")
    if c.status != "ok":
        return [
            name,
            c.variant,
            _num(c.control_mean),
            _num(c.mean),
            "n/a",
            "",
            "",
            "",
            "",
            "",
            "",
            f"insufficient data: {c.reason}",
        ]
    holm = r.holm.get(c.variant) if c.metric == r.primary else None
    note = f"Holm seq p {explain.p(holm)}" if holm is not None and math.isfinite(holm) and len(r.holm) > 1 else ""
    secondary = r.secondary.get((c.variant, c.metric), math.nan)
    if math.isfinite(secondary):
        note = f"{secondary_of.SHORT_NAMES[r.data.settings.secondary_correction]} seq p {explain.p(secondary)}"
    if c.cuped:  # [cuped]
        note = "  ".join(x for x in (note, f"CUPED var {-100 * c.variance_reduction:+.1f}%") if x)
    return [
        name,
        c.variant,
        _num(c.control_mean),
        _num(c.mean),
        explain.percent(c.relative_lift),
        _interval(c.relative_ci),
        explain.p(c.p_value),
        explain.p(c.sequential_p_value),
        _interval(c.sequential_ci),
        f"{100 * c.chance_to_beat:.1f}%",
        _num(c.expected_loss),
        note,
    ]


def _guardrails(r: AnalysisResult) -> str:
    lines = []
    if r.guardrails:
        rows = [_guardrail_row(g) for g in r.guardrails]
        lines.append(table(["guardrail", "variant", "status", "harm", "bound", "margin"], rows, right={3, 4, 5}))
    if r.skipped_guardrails:
        lines.append(f"guardrails skipped (no data): {', '.join(r.skipped_guardrails)}")
    if r.latency_p95:
        lines.append(_latency_p95(r))
    return "\n".join(lines)


def _latency_p95(r: AnalysisResult) -> str:
    """Each candidate's p95 against the control's (current epoch, histograms), with the buckets' resolution."""
    rows = [_latency_row(d) for d in r.latency_p95]
    head = ["latency p95", "variant", "control ms", "candidate ms", "difference", "CI", "relative", "relative CI"]
    epoch, width = r.latency_p95[0].epoch, r.latency_p95[0].resolution
    note = (
        f"p95 of the requests in epoch {epoch}, read from histogram buckets {width:.0%} wide; "
        f"the {1 - r.data.settings.alpha:.0%} interval includes what the buckets hide (fixed horizon, informational)"
    )
    return "\n".join([table(head, rows, right={2, 3, 4, 5, 6, 7}), note])


def _latency_row(d: QuantileDifference) -> list[str]:
    if d.status != "ok":
        return ["p95", d.variant, "n/a", "n/a", "", "", "", f"insufficient data: {d.reason}"]
    low, high = d.ci_ms
    return [
        "p95",
        d.variant,
        _num(d.control_ms),
        _num(d.candidate_ms),
        _num(d.difference_ms, signed=True),
        f"[{_num(low, signed=True)}, {_num(high, signed=True)}]",
        explain.percent(d.relative),
        _interval(d.relative_ci),
    ]


def _guardrail_row(g: NonInferiority) -> list[str]:
    fmt = explain.percent if g.relative else (lambda x: _num(x, signed=True))
    status = g.status if g.reason is None else f"{g.status} ({g.reason})"
    name = g.metric if g.epoch is None else f"{g.metric} (epoch {g.epoch})"  # the current epoch alone
    return [name, g.variant, status, fmt(g.harm), fmt(g.bound), fmt(g.margin).lstrip("+")]


def _shadows(r: AnalysisResult) -> str:
    """[shadow] One row per shadow: what its copies measured; then its guardrails against the control."""
    if not r.shadows:
        return ""
    rows = [
        [
            s.name,
            f"{s.percent:g}%",
            f"{s.units:d}",
            f"{s.copies:d}",
            explain.percent(s.errors).lstrip("+"),
            _num(s.latency_ms),
            _num(s.latency_p99_ms if s.latency_p99_ms is not None else math.nan),
            explain.percent(s.agreement).lstrip("+"),
            "healthy" if s.healthy else "not yet",
        ]
        for s in r.shadows
    ]
    head = ["shadow", "copied", "units", "copies", "errors", "latency_ms", "p99_ms", "agreement", "guardrails"]
    lines = [table(head, rows, right={1, 2, 3, 4, 5, 6, 7})]
    rails = [_guardrail_row(g) for s in r.shadows for g in s.guardrails]
    if rails:
        lines.append(table(["shadow guardrail", "shadow", "status", "harm", "bound", "margin"], rails, right={3, 4, 5}))
    return "\n\n".join(lines)


def _decision(r: AnalysisResult) -> str:
    d = r.decision
    weights = "  ".join(f"{name} {w:g}%" for name, w in d.weights.items())
    return f"decision  {d.action.upper()}  ->  {weights}\n{d.reason}"


def table(head: Sequence[str], rows: Sequence[Sequence[str]], *, right: Set[int] = frozenset()) -> str:
    """Columns padded to their widest cell; `right` names right-aligned column indexes.

    A column that is empty in every row is left out (e.g. no notes).
    """
    keep = [i for i in range(len(head)) if any(str(row[i]) for row in rows)]
    head, rows = [head[i] for i in keep], [[row[i] for i in keep] for row in rows]
    right = {keep.index(i) for i in right if i in keep}
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]

    def fmt(row: Sequence[str]) -> str:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(head), rule, *(fmt(row) for row in rows)])


def _interval(pair: Sequence[float]) -> str:
    low, high = pair
    return f"[{explain.percent(low)}, {explain.percent(high)}]"


def _num(value: float, *, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.4g}" if signed else f"{value:.4g}"
