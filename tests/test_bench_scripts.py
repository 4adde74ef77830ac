"""The Python benchmark scripts still run (tiny sizes; this checks they work, not speed).

A refactor once moved a name a bench script imported, and nothing noticed until the
next full run, minutes in.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import grpc
import grpc.aio
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("analyzer_scaling.py", ["--events", "2000", "--units", "500"], "| events | units"),
        ("analyzer_fleet.py", ["--experiments", "3", "--single", "1"], "| one process for all | 3 |"),
        ("analyzer_fleet.py", ["--experiments", "2", "--single", "1", "--kube"], "Experiment resources"),
        (
            "sim_sequential.py",
            ["--scale", "0.005", "--only", "aa"],
            "A/A returning users, default ramp, 20 looks: false promotion",
        ),
        ("sim_srm.py", ["--experiments", "20", "--looks", "50"], "sequential@0.001"),
        ("gateway_match.py", ["--experiments", "1,50", "--repeat", "50"], "| OIP path /v2/models/m-0/infer |"),
        ("loop_stall.py", ["--events", "300", "--rounds", "1"], "| spill replay (read, decode, send) |"),
        ("sim_cuped.py", ["--experiments", "20", "--looks", "3"], "cuped: sequential power"),
        ("sim_guardrails.py", ["--experiments", "10", "--runs", "2"], "rolled back at the 25% step"),
        ("sim_novelty.py", ["--experiments", "2"], "+30% for 6 of 20 looks"),
        ("sim_plan.py", ["--experiments", "2", "--looks", "5"], "default ramp"),
        ("sim_balanced_ramp.py", ["--experiments", "2", "--long", "1"], "power, balanced"),
        ("sim_regression.py", ["--runs", "5"], "coverage Welch"),
        ("sim_ratio_coverage.py", ["--runs", "3"], "pareto"),
        ("sim_cuped_ratio.py", ["--runs", "3"], "power at +10%"),
        ("sim_cuped_per_request.py", ["--runs", "3"], "latency per request"),
        ("sim_two_covariates.py", ["--runs", "20"], "ratio two/one"),
        ("sim_latency_quantile.py", ["--runs", "2", "--requests", "300"], "normal(50, 3) vs normal(52, 3)"),
        ("sim_secondary_fdr.py", ["--runs", "2"], "bh   :"),
        ("kill_loss.py", ["--kills", "1", "--seconds", "1", "--concurrency", "4"], "| kill | answered | lost"),
        ("router_memory.py", ["--connections", "20", "--units", "200"], "RSS after 200+ distinct units"),
        ("shadow_cost.py", ["--requests", "200"], "the shadow's share"),
        (
            "flush_cost.py",
            ["--batch", "200", "--batches", "2", "--rounds", "1", "--big", "0", "--memory", "500"],
            "| floor | ",
        ),
        ("flush_cluster.py", ["--batch", "100", "--batches", "2", "--rounds", "1"], "| 16 shards | "),
        ("shard_split.py", ["--batch", "200", "--rounds", "2", "--shards", "4"], "| parts (after) |"),
        ("exchange_cost.py", ["--requests", "200", "--rounds", "1"], "µs of CPU per request"),
        ("grpc_relay_cost.py", ["--calls", "200", "--rounds", "1", "--uvloop"], "µs of CPU per call"),
        ("eventlog_cost.py", ["--batches", "1"], '"total_us"'),
        ("http_relay_cost.py", ["--requests", "128", "--connections", "8", "--rounds", "1"], "µs of CPU per request"),
        ("idle_lanes.py", ["--experiments", "3", "--seconds", "0.3"], "| 3 | 1 |"),
        ("lua_prims.py", ["--n", "1000"], "| cjson, a cell of version 4 (12 values) |"),
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
        timeout=300,  # a loaded machine; these check that the scripts work, not their speed
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout


def test_the_grpc_load_generator_and_its_upstream_run() -> None:
    """bench/grpc_load.py, both sides (grpc_bench.py also needs Envoy: it is run by hand)."""
    from abrouter.router.redis_server import free_port

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ports = (free_port(), free_port())
    script = str(ROOT / "bench" / "grpc_load.py")
    upstream = subprocess.Popen(
        [sys.executable, script, "--serve", f"{ports[0]},{ports[1]}"], cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    try:
        assert upstream.stdout is not None and upstream.stdout.readline().startswith(b"serving")
        for mode in (["--concurrency", "2"], ["--rate", "50"]):
            done = subprocess.run(
                [sys.executable, script, "--target", f"127.0.0.1:{ports[1]}", "--seconds", "0.5", *mode],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
            result = json.loads(done.stdout)
            assert result["calls"] > 0 and result["errors"] == 0 and result["p50_ms"] > 0
    finally:
        upstream.terminate()
        upstream.wait(timeout=60)
        if upstream.stdout is not None:
            upstream.stdout.close()


def _h2_load() -> ModuleType:
    """bench/h2_load.py as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("h2_load", ROOT / "bench" / "h2_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Answers(grpc.GenericRpcHandler):
    """A real gRPC server's answers: the message echoed behind ``a:``, or a status, or another message."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = details.method

        async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            if method == "/bench.Fail/Unary":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")
            return (b"x:" if method == "/bench.Other/Unary" else b"a:") + request

        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.mark.parametrize(
    ("method", "answered", "error"),
    [
        ("/inference.GRPCInferenceService/ModelInfer", True, None),
        ("/bench.Fail/Unary", False, "grpc-status 3"),
        ("/bench.Other/Unary", False, "not the message echoed"),
    ],
)
async def test_the_raw_http2_load_counts_only_calls_echoed_with_status_0(
    method: str, answered: bool, error: str | None
) -> None:
    """bench/h2_load.py's client against grpc.aio's server: answers counted, a status or a wrong message an error."""
    h2_load = _h2_load()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Answers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        result = await h2_load.closed_loop(
            f"127.0.0.1:{port}", concurrency=8, connections=2, seconds=0.3, method=method, cpu_pid=os.getpid()
        )
    finally:
        await server.stop(None)
    assert (result["calls"] > 0) is answered
    assert (result["errors"] == 0) is answered
    assert result.get("error_kinds", {}).keys() == ({error} if error else set())
    assert result["window_s"] > 0


async def test_the_raw_http2_echo_answers_a_grpc_aio_client() -> None:
    """bench/h2_load.py's echo upstream, called by grpc.aio: each message back behind its port's tag."""
    h2_load = _h2_load()
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda tag=tag: h2_load.Echo(tag), "127.0.0.1", 0) for tag in (b"a:", b"b:")]
    try:
        for server, tag in zip(servers, (b"a:", b"b:"), strict=True):
            port = server.sockets[0].getsockname()[1]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/bench.Echo/Unary")
                answers = await asyncio.gather(*(call(b"m%d" % i, timeout=30) for i in range(20)))
            assert answers == [tag + b"m%d" % i for i in range(20)]
    finally:
        for server in servers:
            server.close()
