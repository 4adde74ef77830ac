"""One-line explanations of a decision: the statistic, its p or CI, n and the SRM status.

Pure formatting; `decision.py` calls `line()` for every decision it takes, so the history
in Redis and the terminal show the same sentence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from abrouter.analysis.data import ExperimentData
from abrouter.analysis.evidence import Evidence
from abrouter.analysis.stats import reasons
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.stats.noninferiority import NonInferiority
from abrouter.analysis.stats.srm import SrmResult


def line(action: str, why: str, *, data: ExperimentData, evidence: Evidence, names: Sequence[str]) -> str:
    """``action: why; primary: stats per candidate; SRM status``."""
    parts = [f"{action}: {why}"]
    primary = [_comparison(c) for n in names if (c := evidence.primary(data, n)) is not None]
    if primary:
        parts.append(", ".join(primary))
    parts.append(srm(evidence))
    return "; ".join(parts)


def _comparison(c: Comparison) -> str:
    n = f"n={number(c.n_control)}/{number(c.n)}"
    if c.status != reasons.OK:
        return f"{c.metric} {c.variant}: insufficient data ({c.reason}), {n}"
    low, high = c.sequential_ci
    return (
        f"{c.metric} {c.variant} {percent(c.relative_lift)} "
        f"(seq CI {percent(low)}..{percent(high)}, seq p={p(c.sequential_p_value)}), {n}"
    )


def srm(evidence: Evidence) -> str:
    return srm_text(evidence.srm)


def srm_text(result: SrmResult) -> str:
    state = "FLAGGED" if result.flagged else "ok"
    return f"SRM {state} (seq p={p(result.p_value)}, chi-square p={p(result.chi_square_p)})"


def breach(g: NonInferiority) -> str:
    """``latency_ms breached: harm +34.0%, lower bound +21.0% > margin 20.0%``.

    A current-epoch result says so: ``errors breached in epoch 3 alone: ...``.
    """
    fmt = percent if g.relative else _signed
    where = f" in epoch {g.epoch} alone" if g.epoch is not None else ""
    return (
        f"{g.metric} breached{where}: harm {fmt(g.harm)}, lower bound {fmt(g.lower_bound)} "
        f"> margin {fmt(g.margin).lstrip('+')}"
    )


def harm_p(value: float) -> str:
    """``sequential p of harm=0.0012``: the running minimum over looks where the candidate was worse."""
    return f"sequential p of harm={p(value)}"


def p(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value < 1e-4:
        return "<0.0001"
    return f"{value:.2g}" if value < 0.01 else f"{value:.3f}".rstrip("0").rstrip(".")


def percent(value: float) -> str:
    """A relative change as a signed percentage: 0.031 -> +3.1%."""
    if not math.isfinite(value):
        return "n/a"
    return f"{100 * value:+.1f}%"


def number(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.4g}"


def _signed(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.4g}"


def duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def novelty(c: Comparison) -> str:
    """``novelty suspected for candidate on conversion: the effect fell from +0.012 to -0.001 (p=0.003)``."""
    return (
        f"novelty suspected for {c.variant} on {c.metric}: the effect fell from {_signed(c.early_lift)} "
        f"(up to information {number(round(c.split_information, 3))}) to {_signed(c.late_lift)} since "
        f"(p={p(c.decline_p)}); holding the promotion"
    )
