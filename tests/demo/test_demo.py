"""`abrouter demo` end to end, as a user runs it: real processes, real Redis, real HTTP on 127.0.0.1."""

from __future__ import annotations

import html.parser
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from abrouter.demo import world


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


def run_demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # its own embedded Redis
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_path.open("w") as out, err_path.open("w") as err:  # files: a full pipe would stall the demo
        proc = subprocess.Popen(
            [sys.executable, "-m", "abrouter", "demo", "--out", str(tmp_path / "out"), *args],
            stdout=out, stderr=err, text=True, env=env,
        )  # fmt: skip
        # Descendants are collected while the demo runs: once it has exited, a child it left
        # behind belongs to PID 1 and no longer shows under the demo's pid.
        seen: set[int] = set()
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(children_of(proc.pid))
            time.sleep(0.5)
        proc.wait(timeout=30)
    left = [pid for pid in seen if alive(pid)]
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out_path.read_text(), err_path.read_text())
    return result, left


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
def test_the_default_demo_promotes_the_better_model_and_writes_the_report(tmp_path: Path) -> None:
    result, left = run_demo(tmp_path, "--duration", "30", "--seed", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    final = [line for line in result.stdout.splitlines() if "final decision:" in line]
    assert final and "final decision: promote" in final[0], result.stdout[-2000:]
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


@pytest.mark.slow
def test_the_same_model_in_both_arms_is_not_promoted(tmp_path: Path) -> None:
    result, left = run_demo(tmp_path, "--duration", "20", "--seed", "2", "--lift", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    final = next(line for line in result.stdout.splitlines() if "final decision:" in line)
    assert "promote" not in final, final
    assert left == []


def test_bad_flags_are_exit_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "abrouter", "demo", "--rps", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--rps" in result.stderr


def test_the_lift_is_the_ground_truth_ratio_of_click_through_rates() -> None:
    w = world.build(users=800, lift=0.15, seed=3)
    assert w.true_lift == pytest.approx(0.15, abs=0.005)
    same = world.build(users=800, lift=0.0, seed=3)
    assert same.true_lift == 0.0 and (same.control == same.candidate).all()
