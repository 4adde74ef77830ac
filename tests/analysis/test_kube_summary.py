"""The text `kubectl get experiments` prints (`sinks.kube_summary`). Pure."""

from __future__ import annotations

import pytest

from abrouter.analysis.sinks import kube_summary


def test_more_units_scales_the_bound_width_as_one_over_root_n() -> None:
    # width 0.085 must shrink to the 0.05 left below the margin: (0.085/0.05)^2 = 2.89 times the units
    assert kube_summary.more_units(harm=0.15, bound=0.235, margin=0.2, units=500) == 945
    assert kube_summary.more_units(harm=0.0, bound=0.2, margin=0.1, units=1000) == 3000


@pytest.mark.parametrize(
    ("harm", "bound", "margin", "units"),
    [(0.25, 0.3, 0.2, 500), (0.2, 0.3, 0.2, 500), (0.1, 0.1, 0.2, 500), (0.1, 0.3, 0.2, 0)],
)
def test_no_estimate_when_the_harm_is_not_below_the_margin_or_there_is_nothing_to_scale(
    harm: float, bound: float, margin: float, units: int
) -> None:
    assert kube_summary.more_units(harm=harm, bound=bound, margin=margin, units=units) is None


def test_first_clause_is_the_why_without_the_numbers() -> None:
    line = "promote: candidate wins on conversion (p=0.001, Holm); conversion candidate +30.0% (...); SRM ok"
    assert kube_summary.first_clause(line) == "promote: candidate wins on conversion (p=0.001, Holm)"
