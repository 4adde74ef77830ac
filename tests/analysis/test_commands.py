"""`abrouter analyze` and `abrouter plan`, end to end through argparse."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower

from abrouter import cli, redact
from abrouter.analysis import commands, history, service
from abrouter.analysis.sinks.base import DryRunSink
from abrouter.analysis.stats.compare import Running
from abrouter.contract import experiment as spec
from abrouter.contract import keys
from abrouter.router import examples
from abrouter.router.redis_server import RedisServer, free_port
from tests import processes
from tests.analysis.test_summary import EXAMPLE

EXAMPLE_SUMMARY = EXAMPLE  # the issue's example summary
EXAMPLE_CONFIG = examples.EXPERIMENT_PATH


def run(argv: list[str]) -> int:
    """Parse with our subcommands only (as the CLI does) and run the chosen one."""
    parser = argparse.ArgumentParser(prog="abrouter")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def summary_file(tmp_path: Path) -> Path:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(EXAMPLE_SUMMARY))
    return path


# ---------------------------------------------------------------- --summary


def test_analyze_summary_json_has_the_issue_fields(summary_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["analyze", "--summary", str(summary_file), "--json"]) == 0
    (result,) = json_lines(capsys.readouterr().out)

    assert {"p_value", "flagged"} <= set(result["srm"])
    assert result["srm"]["chi_square_p"] == pytest.approx(sps.chisquare([3407, 3461]).pvalue, abs=1e-9)
    assert result["srm"]["flagged"] is False

    (c,) = result["comparisons"]
    for key in (
        "variant",
        "metric",
        "control_mean",
        "mean",
        "absolute_lift",
        "absolute_ci",
        "relative_lift",
        "relative_ci",
        "p_value",
        "sequential_p_value",
        "sequential_ci",
        "chance_to_beat",
        "expected_loss",
    ):
        assert key in c, key
    assert (c["variant"], c["metric"], c["primary"]) == ("candidate", "revenue", True)
    assert c["control_mean"] == pytest.approx(1396.87 / 3407)
    assert c["mean"] == pytest.approx(2422.7 / 3461)
    sd = [math.sqrt((q - s * s / n) / (n - 1)) for n, s, q in ((3407, 1396.87, 52377.9767), (3461, 2422.7, 134698.29))]
    welch = sps.ttest_ind_from_stats(2422.7 / 3461, sd[1], 3461, 1396.87 / 3407, sd[0], 3407, equal_var=False)
    assert c["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
    assert c["sequential_p_value"] >= c["p_value"]  # always-valid costs something at a single look

    assert set(result["decision"]) == {"action", "reason", "weights"}
    assert result["decision"]["action"] == "continue"  # seq p ~0.27: not yet, however tempting p=0.02 is
    assert result["decision"]["weights"] == {"control": 50.0, "candidate": 50.0}
    assert result["guardrails"] == [] and result["skipped_guardrails"] == ["errors", "latency_ms"]


def test_analyze_summary_prints_a_table(summary_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["analyze", "--summary", str(summary_file)]) == 0
    out = capsys.readouterr().out
    assert "revenue *" in out and "candidate" in out and "+70.7%" in out
    assert "decision  CONTINUE" in out
    assert "SRM ok (seq p=1, chi-square p=0.515)" in out


def test_analyze_jsonl_gives_one_result_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bigger = json.loads(json.dumps(EXAMPLE_SUMMARY))
    for v in bigger["variants"]:  # ten times the data: the same means, now a clear win
        v["units"] *= 10
        v["metrics"]["revenue"] = {k: x * 10 for k, x in v["metrics"]["revenue"].items()}
    path = tmp_path / "many.jsonl"
    path.write_text(json.dumps(EXAMPLE_SUMMARY) + "\n" + json.dumps(bigger | {"name": "bigger"}) + "\n")
    assert run(["analyze", "--summary", str(path), "--json"]) == 0
    first, second = json_lines(capsys.readouterr().out)
    assert first["decision"]["action"] == "continue"
    assert second["experiment"] == "bigger"
    assert second["decision"]["action"] == "promote"
    assert second["decision"]["weights"] == {"control": 0.0, "candidate": 100.0}


def conversion_summary(arms: dict[str, tuple[int, int]], **extra: Any) -> dict[str, Any]:
    """A binary-metric summary with equal weights: arm -> (units, conversions)."""
    return {
        "metrics": [{"name": "conversion", "kind": "binary"}],
        "variants": [
            {"name": name, "weight": 1, "units": n, "metrics": {"conversion": {"n": n, "sum": s}}}
            for name, (n, s) in arms.items()
        ],
        **extra,
    }


def analyze_one(tmp_path: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    assert run(["analyze", "--summary", str(path), "--json"]) == 0
    (result,) = json_lines(capsys.readouterr().out)
    return result


def test_srm_is_flagged_and_blocks_promotion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 50/50 configured, 52/48 observed over 20,000 units, and a candidate that clearly wins.
    result = analyze_one(tmp_path, conversion_summary({"control": (9600, 480), "candidate": (10400, 780)}), capsys)
    assert result["srm"]["flagged"] is True
    assert result["srm"]["chi_square_p"] == pytest.approx(sps.chisquare([9600, 10400]).pvalue, rel=1e-9)
    assert 1e-7 < result["srm"]["p_value"] < 1e-5  # the sequential p pays for looking at any time
    assert result["comparisons"][0]["sequential_p_value"] < 0.001
    assert result["decision"]["action"] == "continue"
    assert "SRM FLAGGED" in result["decision"]["reason"]


def test_abn_reports_holm_and_the_chi_square_omnibus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arms = {"control": (5000, 250), "b": (5000, 300), "c": (5000, 240)}
    result = analyze_one(tmp_path, conversion_summary(arms), capsys)
    table = [[s, n - s] for n, s in arms.values()]
    assert result["omnibus"]["conversion"] == pytest.approx(
        sps.chi2_contingency(table, correction=False).pvalue, rel=1e-9
    )
    by_variant = {c["variant"]: c for c in result["comparisons"]}
    # Holm over this look's one-sided p's of the decision design (b is the smaller).
    assert by_variant["b"]["sequential_p_value_holm"] == pytest.approx(
        min(1.0, 2 * min(c["p_better_now"] for c in by_variant.values()))
    )


def test_summary_strata_are_analysed_by_epoch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = conversion_summary(
        {"control": (0, 0), "candidate": (0, 0)},
        epochs=[
            {"epoch": 1, "weights": {"control": 90, "candidate": 10}},
            {"epoch": 2, "weights": {"control": 50, "candidate": 50}},
        ],
    )
    for v, strata in zip(doc["variants"], ([(900, 90), (500, 20)], [(100, 12), (500, 22)])):
        del v["units"], v["metrics"]
        v["strata"] = [
            {"epoch": e, "units": n, "metrics": {"conversion": {"n": n, "sum": s}}}
            for e, (n, s) in enumerate(strata, start=1)
        ]
    result = analyze_one(tmp_path, doc, capsys)
    assert result["comparisons"][0]["strata"] == 2
    # Pooled, the candidate looks worse (34/600 < 110/1400); within each epoch it is better.
    assert 34 / 600 < 110 / 1400 and result["comparisons"][0]["absolute_lift"] > 0
    assert result["srm"]["expected"] == pytest.approx({"control": 1400.0, "candidate": 600.0})
    assert result["srm"]["flagged"] is False


def test_elapsed_past_max_duration_stops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps(EXAMPLE_SUMMARY | {"elapsed": "15d"}))
    assert run(["analyze", "--summary", str(path), "--json"]) == 0
    assert json_lines(capsys.readouterr().out)[0]["decision"]["action"] == "stop"


def test_bad_summary_is_exit_code_2_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = json.loads(json.dumps(EXAMPLE_SUMMARY))
    bad["variants"][1]["metrics"]["revenue"]["n"] = -1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert cli.main(["analyze", "--summary", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"abrouter: error: {path}: variants[1].metrics.revenue.n: must be >= 0, got -1\n"


def test_summary_with_apply_is_rejected(summary_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["analyze", "--summary", str(summary_file), "--apply"]) == 2
    assert "--apply and --every need --config" in capsys.readouterr().err


def test_help_texts_carry_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("analyze", "plan"):
        with pytest.raises(SystemExit) as info:
            run([command, "--help"])
        assert info.value.code == 0
        assert f"abrouter {command} --" in capsys.readouterr().out


# -------------------------------------------------------------------- --config


def write_arms(
    client: redis.Redis, name: str, arms: dict[str, tuple[int, int, float]], *, weights: dict[str, float]
) -> None:
    """Epoch 1 at `weights`: (units, conversions, mean latency in ms) per arm; one request per unit,
    no errors, latency with a standard deviation of 10 ms."""
    k = keys.Keys(name)
    fields: dict[Any, float] = {}
    for variant, (units, conversions, latency) in arms.items():
        prefix = f"1|{variant}|"
        fields |= {
            prefix + "units": units,
            prefix + "exposures": units,
            prefix + "exposures_sq": units,
            prefix + "conversion|sum": conversions,
            prefix + "conversion|sum_sq": conversions,
            prefix + "errors|sum": 0,
            prefix + "errors|sum_sq": 0,
            prefix + "errors|sum_xn": 0,
            prefix + "latency_ms|sum": latency * units,
            prefix + "latency_ms|sum_sq": (latency**2 + 100.0) * units,
            prefix + "latency_ms|sum_xn": latency * units,
        }
    client.hset(k.agg, mapping=fields)
    client.hset(k.epochs, "1", keys.encode_epoch(weights, since=time.time() - 3600))


def write_aggregates(client: redis.Redis, name: str, *, control: tuple[int, int], candidate: tuple[int, int]) -> None:
    """Epoch 1, 50/50: (units, conversions) per arm; one request per unit, no errors, 20 ± 10 ms."""
    arms = {"control": (*control, 20.0), "candidate": (*candidate, 20.0)}
    write_arms(client, name, arms, weights={"control": 50, "candidate": 50})


def config_file(tmp_path: Path, name: str, **analysis: Any) -> Path:
    doc = spec.to_dict(spec.load(EXAMPLE_CONFIG))
    doc["name"] = doc["salt"] = name
    doc["analysis"] |= analysis
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def test_analyze_config_reads_redis_decides_applies_and_records(
    tmp_path: Path, redis_url: str, experiment_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        write_aggregates(client, experiment_name, control=(20_000, 1000), candidate=(20_000, 1300))
        path = config_file(tmp_path, experiment_name, burn_in=0)  # one look: no burn-in to wait out
        argv = ["analyze", "--config", str(path), "--redis-url", redis_url, "--json", "--apply"]

        assert run(argv) == 0
        (result,) = json_lines(capsys.readouterr().out)
        assert result["decision"]["action"] == "promote", result["decision"]["reason"]
        # The example's slow_requests guardrail (absolute margin) passes with no slow request.
        statuses = {g["metric"]: g["status"] for g in result["guardrails"]}
        assert statuses == {"errors": "pass", "latency_ms": "pass", "slow_requests": "pass"}
        assert spec.load(path).weights == (0.0, 1.0)
        assert spec.load(path).epoch == 2

        assert run(argv) == 0  # idempotent: already promoted, nothing more written
        assert json_lines(capsys.readouterr().out)[0]["decision"]["action"] == "promote"
        assert spec.load(path).epoch == 2

        entries = client.xrange(keys.Keys(experiment_name).decisions)
        docs = [json.loads((fields or {})[b"decision"]) for _, fields in entries or []]
        assert [(d["action"], d["applied"]) for d in docs] == [("promote", True), ("promote", False)]
        assert "\n" not in docs[0]["reason"] and docs[0]["reason"].startswith("promote: candidate wins")
    finally:
        client.close()


def test_a_borderline_promotion_stays_promoted_when_the_data_after_it_drifts(
    tmp_path: Path, redis_url: str, experiment_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The history's promote entry keeps the promotion (tests/analysis/test_finished.py has the why)."""
    client = redis.Redis.from_url(redis_url)
    try:
        write_aggregates(client, experiment_name, control=(6000, 300), candidate=(6000, 370))
        path = config_file(tmp_path, experiment_name, burn_in=0)
        argv = ["analyze", "--config", str(path), "--redis-url", redis_url, "--json", "--apply"]
        assert run(argv) == 0
        (first,) = json_lines(capsys.readouterr().out)
        assert first["decision"]["action"] == "promote", first["decision"]["reason"]
        p = next(c["p_better_now"] for c in first["comparisons"] if c["metric"] == "conversion")
        assert 0.01 < p < 0.05
        # The control's returning users, now served the candidate, convert at its rate;
        # intent-to-treat, their conversions still go to the control's epoch-1 sums.
        write_aggregates(client, experiment_name, control=(6000, 330), candidate=(6000, 380))
        assert run(argv) == 0
        (second,) = json_lines(capsys.readouterr().out)
        p = next(c["p_better_now"] for c in second["comparisons"] if c["metric"] == "conversion")
        assert p > 0.05  # this look alone would no longer promote
        assert second["decision"]["action"] == "promote", second["decision"]["reason"]
        assert spec.load(path).weights == (0.0, 1.0)
    finally:
        client.close()


async def test_the_sequential_p_is_a_running_minimum_over_the_history(
    redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path, redis_url: str
) -> None:
    sync = redis.Redis.from_url(redis_url)
    write_aggregates(sync, experiment_name, control=(2000, 100), candidate=(2000, 110))
    sync.close()
    experiment = spec.load(config_file(tmp_path, experiment_name))
    first = await service.look(redis_client, experiment, sink=DryRunSink())
    (c,) = [c for c in first.comparisons if c.metric == "conversion"]
    assert c.sequential_p_value > 0.5

    # A previous look that was far more convincing keeps its p: the minimum over looks,
    # per direction (better / worse than the control).
    k = keys.Keys(experiment_name)
    doc = json.loads(history.encode(first, applied=False))
    for x in doc["sequential_p"]:
        if x["metric"] == "conversion":
            x["p_better"] = 0.0123
    await redis_client.xadd(k.decisions, {history.FIELD: json.dumps(doc)})
    second = await service.look(redis_client, experiment, sink=DryRunSink())
    (c2,) = [x for x in second.comparisons if x.metric == "conversion"]
    assert (c2.sequential_p_value, c2.sequential_p_better) == (0.0123, 0.0123)
    assert c2.sequential_p_worse > 0.5  # the better-direction minimum does not leak into harm


def test_the_history_keeps_both_running_minima_and_restarts_after_a_reset() -> None:
    raw = json.dumps(
        {
            "units": 4000,
            "sequential_p": [
                {"variant": "candidate", "metric": "conversion", "p": 0.01, "p_better": 0.3, "p_worse": 0.01}
            ],
        }
    )
    entry = history.decode(raw)
    assert entry.previous(4000) == {("candidate", "conversion"): Running(0.3, 0.01)}
    assert entry.previous(3999) == {}  # the data was reset since: start afresh


def test_an_old_history_entry_without_directions_seeds_nothing() -> None:
    raw = json.dumps({"units": 10, "sequential_p": [{"variant": "candidate", "metric": "conversion", "p": 0.01}]})
    assert history.decode(raw).previous(10) == {}


async def test_every_keeps_looking_survives_a_bad_edit_and_stops_on_ctrl_c(
    tmp_path: Path, redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    sync = redis.Redis.from_url(redis_url)
    write_aggregates(sync, experiment_name, control=(2000, 100), candidate=(2000, 110))
    sync.close()
    path = config_file(tmp_path, experiment_name)
    good = path.read_text()
    decisions = keys.Keys(experiment_name).decisions
    argv = ["--config", str(path), "--redis-url", redis_url, "--every", "0.1", "--json"]
    async with processes.abrouter("analyze", *argv, stdout=asyncio.subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for _ in range(2):  # it looks again and again
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert json.loads(line)["decision"]["action"] == "continue"
        drain = asyncio.create_task(proc.stdout.read())  # a full pipe would block its next look
        path.write_text("name: x\nunit: {header: u}\nvariants: []\n")  # a bad edit while it runs
        error = await asyncio.wait_for(proc.stderr.readline(), 60)
        assert error.decode().startswith(f"abrouter: error: {path}, line 3: variants: needs two or more variants")
        assert proc.returncode is None  # ...is reported, and the loop goes on
        looks = await redis_client.xlen(decisions)
        path.write_text(good)
        deadline = time.monotonic() + 60
        while await redis_client.xlen(decisions) <= looks:
            assert time.monotonic() < deadline, "no look after the config was mended"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 60) == 130
        assert b"Traceback" not in await proc.stderr.read()
        await drain


def test_unreachable_redis_is_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path, "gone")
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    assert run(["analyze", "--config", str(path), "--redis-url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("abrouter: error: cannot read experiment 'gone' from Redis")
    assert "secret" not in err and "user:***@127.0.0.1" in err


@pytest.mark.parametrize("command", ["analyze", "report"])
def test_a_redis_that_stops_answering_is_exit_code_1_not_a_hang(
    command: str, tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, "paused")
    process = redis_server._process
    assert process is not None
    process.send_signal(signal.SIGSTOP)  # connections are accepted by the kernel, nothing answers
    try:
        argv = [command, "--config", str(path), "--redis-url", redis_server.url, "--redis-timeout", "0.5"]
        assert cli.main([*argv, "--out", str(tmp_path / "r.html")] if command == "report" else argv) == 1
    finally:
        process.send_signal(signal.SIGCONT)
    err = capsys.readouterr().err
    assert err.startswith("abrouter: error: cannot read experiment 'paused' from Redis"), err
    assert "Timeout" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_bad_config_is_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nunit: {header: u}\nvariants: []\n")
    assert cli.main(["analyze", "--config", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"abrouter: error: {path}, line 3: variants: needs two or more variants")


def test_every_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["analyze", "--config", str(EXAMPLE_CONFIG), "--every", "0"]) == 2
    assert "argument --every: must be a finite number > 0, got '0'" in capsys.readouterr().err


# ------------------------------------------------------------------------ plan


@pytest.mark.parametrize(
    ("baseline", "mde", "relative", "power", "alpha"),
    [
        (0.05, 0.1, True, 0.8, 0.05),
        (0.05, 0.01, False, 0.9, 0.01),
        (0.3, 0.05, True, 0.8, 0.05),
    ],
)
def test_plan_matches_statsmodels(
    baseline: float, mde: float, relative: bool, power: float, alpha: float, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "plan",
        "--baseline",
        str(baseline),
        "--mde",
        str(mde),
        "--power",
        str(power),
        "--alpha",
        str(alpha),
        "--traffic",
        "1000",
        "--json",
    ] + (["--relative"] if relative else [])
    assert run(argv) == 0
    got = json.loads(capsys.readouterr().out)
    p1, p2 = baseline, baseline * (1 + mde) if relative else baseline + mde
    effect = (p2 - p1) / math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 2)
    # statsmodels also counts the (negligible) power of the wrong tail, so allow one unit.
    expected = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0)
    assert abs(got["units_per_arm"] - math.ceil(expected)) <= 1
    assert got["total_units"] == 2 * got["units_per_arm"]
    # The default ramp (5%, 25%, 50%; 500 per arm) and a week's burn-in come on top (issue 18).
    assert got["ramp_units"] == 500 / 0.05 + 500 / 0.25
    assert got["burn_in_units"] == 7 * 1000
    assert got["final_units"] == got["total_units"]  # 50/50 at the final step
    # The step into the final one waits for the burn-in too: the canary phase is the larger.
    assert got["total_units_with_ramp"] == max(got["ramp_units"], 7 * 1000) + got["final_units"]
    assert got["days"] == pytest.approx(got["total_units_with_ramp"] / 1000)


def test_plan_counts_the_ramp_and_the_burn_in(capsys: pytest.CaptureFixture[str]) -> None:
    """Three arms, ramp 10% -> 40%: the 10% step needs 500 per candidate (5% each); the final
    split 60/20/20 gives 2ab/(a+b) = 0.3 effective units per arm per user."""
    argv = ["plan", "--baseline", "0.05", "--mde", "0.1", "--relative", "--variants", "3", "--json"]
    assert run([*argv, "--ramp", "10,40", "--burn-in", "0"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["ramp_units"] == 500 / 0.05
    assert abs(got["final_units"] - got["units_per_arm"] / 0.3) <= 1
    assert got["total_units_with_ramp"] == got["ramp_units"] + got["final_units"] and got["days"] is None
    assert run([*argv, "--ramp", ""]) == 0  # no ramp: the even split; the burn-in only delays
    got = json.loads(capsys.readouterr().out)
    assert got["ramp_units"] == 0 and abs(got["final_units"] - 3 * got["units_per_arm"]) <= 1
    assert got["total_units_with_ramp"] == got["final_units"]
    assert run([*argv, "--burn-in", "30", "--traffic", "1000000"]) == 0  # a long burn-in: its users dominate
    got = json.loads(capsys.readouterr().out)
    assert got["total_units_with_ramp"] == 30_000_000 + got["final_units"]


def test_plan_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(["plan", "--baseline", "0.05", "--mde", "0.1", "--relative", "--variants", "3", "--traffic", "20000"]) == 0
    )
    out = capsys.readouterr().out
    assert "units per arm:" in out and "total units:" in out and "days at 20,000 units/day" in out
    assert "3 variants" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baseline", "1.5", "--mde", "0.1"], "--baseline: must be between 0 and 1"),
        (["--baseline", "0.05", "--mde", "0"], "--mde: must be > 0"),
        (["--baseline", "0.6", "--mde", "0.5"], "--mde: puts the target rate at 1.1"),
        (["--baseline", "0.05", "--mde", "0.1", "--variants", "1"], "--variants: must be >= 2"),
        (["--baseline", "0.05", "--mde", "0.1", "--traffic", "-5"], "--traffic: must be > 0"),
        (["--baseline", "0.05", "--mde", "0.1", "--ramp", "50,25"], "--ramp: must be strictly increasing"),
        (["--baseline", "0.05", "--mde", "0.1", "--burn-in", "-1"], "--burn-in: must be >= 0"),
    ],
)
def test_plan_rejects_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_redis_url_is_masked() -> None:
    assert redact.mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact.mask_url("redis://host:6379/0") == "redis://host:6379/0"
    assert redact.mask_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact.mask_url("redis://host:6379/0?password=pw&db=1") == "redis://host:6379/0?password=***&db=1"


def test_the_example_config_is_analyzable(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE_CONFIG, tmp_path / "e.yaml")
    assert spec.load(tmp_path / "e.yaml").analysis.ramp == (5.0, 25.0, 50.0)
