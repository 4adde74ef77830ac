"""The Python benchmark scripts still run (tiny sizes; this checks they work, not speed).

A refactor once moved a name a bench script imported, and nothing noticed until the
next full run, minutes in.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("analyzer_scaling.py", ["--events", "2000", "--units", "500"], "| events | units"),
        (
            "sim_sequential.py",
            ["--scale", "0.005", "--only", "aa"],
            "A/A returning users, default ramp, 20 looks: false promotion",
        ),
        ("sim_srm.py", ["--experiments", "20", "--looks", "50"], "sequential@0.001"),
        ("loop_stall.py", ["--events", "300", "--rounds", "1"], "| spill replay (read, decode, send) |"),
        ("sim_cuped.py", ["--experiments", "20", "--looks", "3"], "cuped: sequential power"),
        ("sim_guardrails.py", ["--experiments", "10", "--runs", "2"], "rolled back at the 25% step"),
        ("sim_novelty.py", ["--experiments", "2"], "+30% for 6 of 20 looks"),
        ("sim_plan.py", ["--experiments", "2", "--looks", "5"], "default ramp"),
        ("sim_ratio_coverage.py", ["--runs", "3"], "pareto"),
        ("kill_loss.py", ["--kills", "1", "--seconds", "1", "--concurrency", "4"], "| kill | answered | lost"),
        ("router_memory.py", ["--connections", "20", "--units", "200"], "RSS after 200+ distinct units"),
        (
            "flush_cost.py",
            ["--batch", "200", "--batches", "2", "--rounds", "1", "--big", "0", "--memory", "500"],
            "| floor | ",
        ),
        ("flush_cluster.py", ["--batch", "100", "--batches", "2", "--rounds", "1"], "| 16 shards | "),
    ],
)
def test_bench_script_runs(script: str, args: list[str], expect: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout
