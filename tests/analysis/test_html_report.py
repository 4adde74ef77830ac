"""`abrouter report` over a real Redis: per-arm latency p50/p95 over time, from the histograms.

The router's event log writes the latency histograms; two looks record the arms' p50 and
p95 in the history (the candidate slows down between them); the report plots both per arm.
"""

from __future__ import annotations

import asyncio
import html.parser
from pathlib import Path

import numpy as np
import redis
import redis.asyncio
import yaml

from abrouter import cli
from abrouter.analysis import history, service
from abrouter.analysis.sinks.base import DryRunSink
from abrouter.analysis.sinks.file import FileSink
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


class Text(html.parser.HTMLParser):
    """The text of each element with an id (nested ids included in their parents), and the
    text outside any <details>."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self._open: list[str | None] = []
        self._details = 0
        self.shown = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "meta", "img"):
            return
        self._details += tag == "details"
        ident = dict(attrs).get("id")
        self._open.append(ident)
        if ident:
            self.by_id.setdefault(ident, "")

    def handle_endtag(self, tag: str) -> None:
        self._details -= tag == "details"
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if any(t == "svg" for t in self._open):
            return
        for ident in self._open:
            if ident:
                self.by_id[ident] += data
        if not self._details:
            self.shown += data


async def ramp_then_roll_back(url: str, path: Path, tmp_path: Path) -> None:
    """A candidate ramped on fast traffic, then rolled back when it becomes slow."""
    rng = np.random.default_rng(7)
    client = redis.asyncio.Redis.from_url(url)
    try:
        for look, candidate_ms in enumerate((10.0, 10.0, 80.0)):
            experiment = model.load(path)
            log = EventLog(redis_url=url, experiment=experiment, spill_dir=tmp_path / "spill")
            await log.start()
            for i in range(600):
                variant = experiment.variants[int(rng.random() * 100 >= experiment.variants[0].weight)].name
                ms = candidate_ms if variant == "candidate" else 10.0
                latency = float(rng.lognormal(np.log(ms), 0.2))
                unit = f"u{look}-{i}"
                exposure = Exposure(f"r{look}-{i}", unit, variant, experiment.epoch, 1.7e9, 200, latency, False)
                log.record_exposure(exposure)
            await log.flush()
            await log.close()
            await service.look(client, experiment, sink=FileSink(path), now=1.7e9 + 60 * look)
    finally:
        await client.aclose()


def test_after_a_rollback_the_report_says_so_and_why(redis_url: str, experiment_name: str, tmp_path: Path) -> None:
    doc = spec(experiment_name)
    doc["variants"] = [{**v, "weight": w} for v, w in zip(doc["variants"], (80, 20))]  # type: ignore[call-overload]
    doc["analysis"] = {
        "min_units_per_arm": 50,
        "ramp": [20, 50],
        "guardrails": [{"metric": "latency_ms", "direction": "decrease", "margin": 0.5, "relative": True}],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc))
    asyncio.run(ramp_then_roll_back(redis_url, path, tmp_path))
    assert model.load(path).weights == (1.0, 0.0), "the slow candidate was rolled back"

    out = tmp_path / "report.html"
    assert cli.main(["report", "--config", str(path), "--redis-url", redis_url, "--out", str(out)]) == 0
    text = Text()
    text.feed(out.read_text())
    summary = " ".join(text.by_id["summary"].split())
    # The headline is the last decision that was applied, and why, in words.
    assert summary.startswith("Rolled back: the control serves all traffic again"), summary
    assert "latency_ms" in summary and "No winner yet" not in summary
    assert "ramped step by step" not in summary and "ramp to 50%" in summary, "the steps that were applied"
    # Each guardrail with its margin and its result.
    rails = " ".join(text.by_id["guardrails"].split())
    assert "latency_ms" in rails and "50% of the control" in rails and "breach" in rails, rails
    # One p per comparison in view, explained; the others in a details section.
    shown = " ".join(text.shown.split())
    assert "p to promote" in shown and "sequential p" not in shown and "fixed-horizon p" not in shown
    details = " ".join(text.by_id["details"].split())
    assert "fixed-horizon p" in details and "sequential p" in details


def test_several_configs_write_one_report_each_and_an_index(redis_url: str, tmp_path: Path) -> None:
    from tests.analysis.test_commands import write_arms

    client = redis.Redis.from_url(redis_url)
    configs = []
    for name, conversions in (("gw-first", 120), ("gw-second", 480)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec(name)))
        configs += ["--config", str(path)]
        arms = {"control": (1000, 100, 20.0), "candidate": (1000, conversions, 20.0)}
        write_arms(client, name, arms, weights={"control": 0.5, "candidate": 0.5})
    client.close()
    out = tmp_path / "reports"
    assert cli.main(["report", *configs, "--redis-url", redis_url, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["gw-first.html", "gw-second.html", "index.html"]
    index = (out / "index.html").read_text()
    assert 'href="gw-first.html"' in index and 'href="gw-second.html"' in index
    for name in ("gw-first", "gw-second"):
        assert f"Experiment {name}" in (out / f"{name}.html").read_text()
    twice = ["report", *configs[:2], *configs[:2], "--redis-url", redis_url, "--out", str(out)]
    assert cli.main(twice) == 2  # the same experiment twice
