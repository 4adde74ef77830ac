"""`abrouter report` over a real Redis: per-arm latency p50/p95 over time, from the histograms.

The router's event log writes the latency histograms; two looks record the arms' p50 and
p95 in the history (the candidate slows down between them); the report plots both per arm.
"""

from __future__ import annotations

import asyncio
import html.parser
from pathlib import Path

import numpy as np
import redis.asyncio
import yaml

from abrouter import cli
from abrouter.analysis import history, service
from abrouter.analysis.sinks.base import DryRunSink
from abrouter.analysis.stats import histogram
from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.router.eventlog.events import Exposure
from abrouter.router.eventlog.log import EventLog


class Figures(html.parser.HTMLParser):
    """The inline SVG of each <figure id=...>, as text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.figures: dict[str, list[str]] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "figure":
            self._current = dict(attrs).get("id")
            self.figures[self._current or ""] = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._current = None

    def handle_comment(self, data: str) -> None:  # matplotlib's SVG names each text in a comment
        if self._current is not None:
            self.figures[self._current].append(data.strip())


def spec(name: str) -> dict[str, object]:
    return {
        "name": name,
        "unit": {"header": "X-User-Id"},
        "variants": [
            {"name": "control", "upstream": "http://control:8080", "weight": 50},
            {"name": "candidate", "upstream": "http://candidate:8080", "weight": 50},
        ],
        "metrics": [{"name": "conversion", "kind": "binary"}],
        "slow_request": "100ms",
    }


async def record_and_look(url: str, experiment: model.Experiment, tmp_path: Path) -> list[float]:
    """Two rounds of traffic, a look after each; returns the candidate's p95 at each look."""
    rng = np.random.default_rng(5)
    log = EventLog(redis_url=url, experiment=experiment, spill_dir=tmp_path / "spill")
    await log.start()
    client = redis.asyncio.Redis.from_url(url)
    try:
        for look, candidate_ms in enumerate((12.0, 60.0)):
            for i in range(400):
                variant, ms = ("control", 10.0) if i % 2 else ("candidate", candidate_ms)
                latency = float(rng.lognormal(np.log(ms), 0.4))
                log.record_exposure(Exposure(f"r{look}-{i}", f"u{look}-{i}", variant, 1, 1.7e9, 200, latency, False))
            await log.flush()
            await service.look(client, experiment, sink=DryRunSink(), now=1.7e9 + 60 * look)
        entries = await history.entries(client, keys.Keys(experiment.name))
        stored = keys.decode_latency(await client.hgetall(keys.Keys(experiment.name).latency))
    finally:
        await client.aclose()
        await log.close()
    last = {a.name: a for a in entries[-1].arms}["candidate"]
    assert last.latency_p95_ms == histogram.quantile(stored[(1, "candidate")], 0.95), "the entry reads the histogram"
    return [next(a for a in e.arms if a.name == "candidate").latency_p95_ms or 0.0 for e in entries]


def test_the_report_plots_latency_p50_and_p95_per_arm_over_time(
    redis_url: str, experiment_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec(experiment_name)))
    p95 = asyncio.run(record_and_look(redis_url, model.load(path), tmp_path))
    # The second round's candidate is 5x slower: its p95 over the epoch rises with it.
    assert 12 < p95[0] < 30 and p95[1] > 2 * p95[0], p95

    out = tmp_path / "report.html"
    assert cli.main(["report", "--config", str(path), "--redis-url", redis_url, "--out", str(out)]) == 0
    text = out.read_text()
    parser = Figures()
    parser.feed(text)
    latency = parser.figures["plot-latency"]
    for label in ("control p50", "control p95", "candidate p50", "candidate p95"):
        assert label in latency, (label, latency)
    assert any("p50 and p95" in t for t in latency), "titled as quantiles, not the mean"
    assert "latency p50 / p95 (ms)" in text, "the arms table shows them too"
