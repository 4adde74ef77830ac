"""The demo's two experiments, served by one router on one port and looked at by one analyzer.

- **demo-recsys** (the main one, whose promotion ends the demo): the requests for model
  ``recommender``; the popularity baseline against a personalised model that is better
  by ``--lift``, on two model servers.
- **demo-ranker**: the requests for model ``ranker``, at a sixth of the rate; the same
  popularity ranking against ten random items per user, a candidate about half as good.
  Both arms are one multi-model server, each arm's requests renamed to its own model
  (``ranker-popular``, ``ranker-explore``) by the variant's ``model:``. The analyzer
  should roll it back at its first step, 20% of the traffic; on a busy machine the demo
  may end first, and then says where it stands.

Each experiment's salt is its name (the default), so a user's arm in one says nothing
about their arm in the other.
"""

from __future__ import annotations

from typing import Any

from abrouter.demo import servers

MAIN = "demo-recsys"
RANKER = "demo-ranker"
#: The ranker's requests per second, as a share of --rps: enough to see a much worse
#: candidate within seconds, little enough not to slow the main experiment.
RANKER_SHARE = 1 / 6

_METRICS = [
    {"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "impressions"},
    {"name": "clicks", "kind": "continuous"},
    {"name": "impressions", "kind": "continuous"},
]
_GUARDRAILS = [
    {"metric": "errors", "direction": "decrease", "margin": 0.02},
    # The candidate is 3 ms slower by design (a heavier model). A busy machine slows every
    # request, so the tolerated harm grows with the control's own latency: the larger of
    # 50 ms and the control's mean (relative 1.0).
    {"metric": "latency_ms", "direction": "decrease", "margin": 1.0, "relative": True, "min_margin": 50},
]


def main(control_url: str, candidate_url: str) -> dict[str, Any]:
    """demo-recsys: CTR per impression, ramped 20% -> 50%, then promoted on evidence."""
    return {
        "name": MAIN,
        "match": {"model": servers.MODEL},
        "unit": {"header": "X-User-Id"},
        "epoch": 1,
        "variants": [
            {"name": "control", "upstream": control_url, "weight": 80},
            {"name": "candidate", "upstream": candidate_url, "weight": 20},
        ],
        "metrics": _METRICS,
        "analysis": _analysis(min_units_per_arm=150),
    }


def ranker(url: str) -> dict[str, Any]:
    """demo-ranker: the same metrics and policy, one model server renamed per arm."""
    (control_model, candidate_model) = servers.RANKER_MODELS
    return {
        "name": RANKER,
        "match": {"model": servers.RANKER},
        "unit": {"header": "X-User-Id"},
        "epoch": 1,
        "variants": [
            {"name": "control", "upstream": url, "weight": 80, "model": control_model},
            {"name": "candidate", "upstream": url, "weight": 20, "model": candidate_model},
        ],
        "metrics": _METRICS,
        # A sixth of the traffic: fewer units before the first decision.
        "analysis": _analysis(min_units_per_arm=50),
    }


def _analysis(*, min_units_per_arm: int) -> dict[str, Any]:
    return {
        "alpha": 0.05,
        "min_units_per_arm": min_units_per_arm,
        "expected_units_per_arm": 1500,
        "ramp": [20, 50],
        # The step into the final one waits for the burn-in (a week by default, against
        # novelty effects); the demo lasts a minute.
        "burn_in": "4s",
        "guardrails": _GUARDRAILS,
    }
