"""`abrouter demo` end to end, as a user runs it: real processes, real Redis, real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import html.parser
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abrouter import cli
from abrouter.demo import experiments, looks, population, progress, world


def children_of(pid: int) -> list[int]:
    """Every live process whose parent chain leads to `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        found += kids
        frontier += kids
    return found


def start_demo(tmp_path: Path, *args: str, stdout: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # its own embedded Redis
    with (tmp_path / "stderr.txt").open("w") as stderr:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "abrouter", "demo", "--out", str(tmp_path / "out"), *args],
            stdout=stdout, stderr=stderr, text=True, env=env,
        )  # fmt: skip


def watch(proc: subprocess.Popen[str], *, timeout: float = 240) -> set[int]:
    """Wait for the demo to exit; every descendant seen while it ran.

    Descendants are collected while the demo runs: once it has exited, a child it left
    behind belongs to PID 1 and no longer shows under the demo's pid.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen.update(children_of(proc.pid))
        time.sleep(0.5)
    proc.wait(timeout=30)
    return seen


def run_demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    out_path = tmp_path / "stdout.txt"
    with out_path.open("w") as out:  # a file: a full pipe would stall the demo
        proc = start_demo(tmp_path, *args, stdout=out)
        seen = watch(proc)
    left = [pid for pid in seen if alive(pid)]
    stderr = (tmp_path / "stderr.txt").read_text()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_path.read_text(), stderr), left


@contextlib.contextmanager
def one_core_busy() -> Iterator[None]:
    """Another process keeps one core busy (bounded: it stops by itself after 5 minutes)."""
    spin = "import time\nend = time.monotonic() + 300\nwhile time.monotonic() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        yield
    finally:
        busy.kill()
        busy.wait()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Sections(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids |= {v for k, v in attrs if k == "id" and v}
        self.svgs += tag == "svg"


@pytest.mark.slow
def test_the_default_demo_promotes_the_better_model_on_a_busy_machine(tmp_path: Path) -> None:
    # Events a stopped demo left to replay: they belong to its Redis, not to this run's.
    spill = tmp_path / "out" / "spill"
    spill.mkdir(parents=True)
    (spill / "abrouter.demo-recsys.spill").write_text('{"left": "by an earlier demo"}\n')
    with one_core_busy():
        result, left = run_demo(tmp_path, "--duration", "30", "--seed", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "removed 31 bytes of events an earlier demo left in" in result.stdout
    assert not any("earlier demo" in f.read_text(errors="replace") for f in spill.rglob("*") if f.is_file())
    assert "the analyzer's first look came" in result.stdout and "s begin now" in result.stdout
    final = [line for line in result.stdout.splitlines() if "final decision:" in line]
    assert final and "final decision: promote" in final[0], result.stdout[-3000:]
    assert "ctr candidate +" in final[0], "promoted with a positive lift"
    assert left == [], f"child processes left behind: {left}"
    parser = Sections()
    report = (tmp_path / "out" / "report.html").read_text()
    parser.feed(report)
    assert {"summary", "experiment", "arms", "plots", "history"} <= parser.ids
    assert {"plot-lift", "plot-weights", "plot-latency", "plot-units"} <= parser.ids
    assert parser.svgs >= 4, "plots are embedded as inline SVG"
    # matplotlib's SVG names each text in a comment: the latency plot has p50 and p95 per arm
    assert all(f"<!-- {arm} {q} -->" in report for arm in ("control", "candidate") for q in ("p50", "p95"))
    assert_both_experiments_served_and_analysed(tmp_path / "out", result.stdout)


def assert_both_experiments_served_and_analysed(out: Path, stdout: str) -> None:
    """One router served both experiments, one analyzer looked at both, and each has its report.

    The demo reads the analyzer's JSON lines and prints each experiment's last decision by
    the name the line carried. Whether the second experiment's worse candidate was rolled
    back before the main one ended depends on how busy the machine is: only that it was
    looked at, with data in both arms, is checked.
    """
    for name in (experiments.MAIN, experiments.RANKER):
        final = [line for line in stdout.splitlines() if line.startswith(f"abrouter demo: {name}: final decision:")]
        # A primary statistic ("ctr candidate -48.0% (seq CI ...)") needs clicks reported for
        # answered requests: for the ranker, answers from the model each arm was renamed to
        # (its server knows no model "ranker").
        assert final and re.search(r"ctr candidate [+-]\d", final[0]), stdout[-3000:]
        report = Sections()
        report.feed((out / "reports" / f"{name}.html").read_text())
        assert {"summary", "experiment", "arms", "history"} <= report.ids, name
        assert f'href="{name}.html"' in (out / "reports" / "index.html").read_text()
    assert (out / "reports" / f"{experiments.MAIN}.html").read_bytes() == (out / "report.html").read_bytes()


@pytest.mark.slow
def test_a_second_demo_in_the_directory_refuses_and_ctrl_c_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = start_demo(tmp_path, "--duration", "60", stdout=subprocess.PIPE)
    assert first.stdout is not None
    seen: set[int] = set()
    try:
        for line in first.stdout:  # the clock starts once the analyzer has looked
            if "begin now" in line:
                break
        else:
            pytest.fail(f"the demo ended before its first look: {(tmp_path / 'stderr.txt').read_text()[-2000:]}")
        seen = set(children_of(first.pid))
        assert cli.main(["demo", "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"another abrouter demo (pid {first.pid}) is running in {tmp_path / 'out'}" in err
        assert err.count("\n") == 1
        first.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        rest = first.stdout.read()
        seen |= watch(first, timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
    assert first.returncode == 130
    assert rest.splitlines()[-1] == "abrouter demo: interrupted; every process it started is stopped (no report)"
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr, stderr
    assert [pid for pid in seen if alive(pid)] == []


@pytest.mark.slow
def test_the_same_model_in_both_arms_is_not_promoted(tmp_path: Path) -> None:
    result, left = run_demo(tmp_path, "--duration", "20", "--seed", "2", "--lift", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    final = next(line for line in result.stdout.splitlines() if "final decision:" in line)
    assert "promote" not in final, final
    assert left == []


def test_bad_flags_are_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--rps", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rps" in err


def test_the_lift_is_the_ground_truth_ratio_of_click_through_rates() -> None:
    w = world.build(users=800, lift=0.15, seed=3)
    assert w.true_lift == pytest.approx(0.15, abs=0.005)
    same = world.build(users=800, lift=0.0, seed=3)
    assert same.true_lift == 0.0 and (same.control == same.candidate).all()


def test_the_live_view_says_when_the_machine_is_too_busy_for_the_asked_rate() -> None:
    state = looks.State()
    state.read(json.dumps({"experiment": experiments.MAIN, "variants": [{"name": "control", "units": 10}],
                           "decision": {"reason": "continue: ..."}}))  # fmt: skip
    slow = population.Traffic(requests=1000, started=time.monotonic() - 10)  # 100 req/s
    (first, *_) = progress.lines(state, slow, 10.0, rps=300)
    assert "100 req/s (of 300 asked: this machine is busy, so the test takes longer)" in first
    fast = population.Traffic(requests=2900, started=time.monotonic() - 10)
    assert "busy" not in progress.lines(state, fast, 10.0, rps=300)[0]


def test_each_experiment_keeps_the_decision_that_ended_it_and_the_view_shows_both() -> None:
    state = looks.State()
    for decision in (
        {"action": "continue", "reason": "continue: waiting", "weights": {"control": 80.0, "candidate": 20.0}},
        {"action": "rollback", "reason": "rollback: significant harm", "weights": {"control": 100.0, "candidate": 0.0}},
        {
            "action": "stop",
            "reason": "stop: no candidate receives traffic",
            "weights": {"control": 100.0, "candidate": 0.0},
        },
    ):
        state.read(json.dumps({"experiment": experiments.RANKER, "decision": decision}))
    state.read("not a look")
    ranker = state.track(experiments.RANKER)
    assert ranker.decisions == ["rollback: significant harm"]
    assert ranker.final() == "rollback: significant harm"
    assert state.track(experiments.MAIN).final() == "none: no look completed"
    view = progress.lines(state, population.Traffic(), 1.0, ranker=population.Traffic(requests=5))
    assert len(view) == 9
    assert view[5].lstrip().startswith(f"{experiments.RANKER}:") and "requests 5" in view[5]
    assert view[6].lstrip().startswith("arms: -; weights: control 100%, candidate 0%")
    assert view[8].endswith("decision: stop: no candidate receives traffic")
    assert max(len(line) for line in view) <= 100
