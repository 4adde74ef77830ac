"""The gRPC listener in front of Open Inference Protocol v2 servers, driven by the unmodified
``tritonclient.grpc`` client: the same answers as calling the assigned server, only inference
calls are exposures, and an outcome is credited by a gRPC call's request id."""

from __future__ import annotations

import asyncio
import queue

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2

from tests.router.grpc.conftest import MakeGrpcRouter
from tests.router.grpc.servers import OipServer

MODEL = "recsys"


def _infer(address: str, values: list[int], *, user: str | None = None, model: str = MODEL) -> np.ndarray:
    """One ModelInfer call with the Triton client, as an application makes it (blocking)."""
    client = triton.InferenceServerClient(url=address)
    try:
        tensor = triton.InferInput("INPUT0", [len(values)], "INT32")
        tensor.set_data_from_numpy(np.array(values, dtype=np.int32))
        result = client.infer(model, [tensor], headers={"x-user-id": user} if user else None)
        return result.as_numpy("OUTPUT0")
    finally:
        client.close()


def _stream_infer(address: str, values: list[int], *, user: str, model: str = MODEL) -> list[int]:
    """One ModelStreamInfer stream, a request per value, with the Triton client (blocking): each answer's OUTPUT0[0]."""
    client = triton.InferenceServerClient(url=address)
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)), headers={"x-user-id": user})
        for value in values:
            tensor = triton.InferInput("INPUT0", [1], "INT32")
            tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
            client.async_stream_infer(model, [tensor])
        out = []
        for _ in values:
            result, error = answers.get(timeout=60)
            if error is not None:
                raise error  # type: ignore[misc]
            out.append(int(result.as_numpy("OUTPUT0")[0]))  # type: ignore[attr-defined]
        return out
    finally:
        client.stop_stream()
        client.close()


def _health_and_metadata(address: str, user: str) -> None:
    client = triton.InferenceServerClient(url=address)
    headers = {"x-user-id": user}
    try:
        assert client.is_server_live(headers=headers)
        assert client.is_server_ready(headers=headers)
        assert client.is_model_ready(MODEL, headers=headers)
        assert client.get_server_metadata(headers=headers).name in ("control", "candidate")
        assert client.get_model_metadata(MODEL, headers=headers).inputs[0].name == "INPUT0"
    finally:
        client.close()


async def test_tritonclient_through_the_router_gets_what_the_assigned_server_answers_sticky_per_user(
    make_grpc_router: MakeGrpcRouter, oip_servers: dict[str, OipServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in oip_servers.items()})
    by_offset = {1000: "control", 2000: "candidate"}
    arms: dict[str, set[str]] = {}
    for i in range(40):
        user = f"user-{i}"
        values = [i, i + 1, i + 2]
        for _ in range(2):
            via_router = await asyncio.to_thread(_infer, r.grpc_address, values, user=user)
            arm = by_offset[int(via_router[0]) - i]
            direct = await asyncio.to_thread(_infer, oip_servers[arm].address, values)
            assert via_router.tolist() == direct.tolist()
            arms.setdefault(user, set()).add(arm)
    assert all(len(a) == 1 for a in arms.values())  # sticky
    assert {next(iter(a)) for a in arms.values()} == {"control", "candidate"}


async def test_only_inference_calls_are_exposures_and_health_and_metadata_calls_are_forwarded(
    make_grpc_router: MakeGrpcRouter, oip_servers: dict[str, OipServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in oip_servers.items()})
    for i in range(6):
        await asyncio.to_thread(_health_and_metadata, r.grpc_address, f"user-{i}")
    await asyncio.to_thread(_infer, r.grpc_address, [1, 2], user="user-0")
    await asyncio.to_thread(_infer, r.grpc_address, [1, 2], user="user-1")
    await r.settle()
    strata = await r.strata()
    assert sum(s.exposures for s in strata.values()) == 2
    assert sum(s.servicer.infer_calls for s in oip_servers.values()) == 2
    assert sum(r.router.metrics.requests.values()) == 6 * 5 + 2  # every call is counted in the metrics


async def test_an_outcome_is_credited_by_the_request_id_of_a_grpc_call(
    make_grpc_router: MakeGrpcRouter, oip_servers: dict[str, OipServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in oip_servers.items()})
    request = service_pb2.ModelInferRequest(
        model_name=MODEL,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="INT32", shape=[1])],
        raw_input_contents=[np.array([7], dtype=np.int32).tobytes()],
    )
    async with r.channel() as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            request.SerializeToString(), metadata=(("x-user-id", "buyer"),), timeout=10
        )
        reply = service_pb2.ModelInferResponse.FromString(await call)
        head = dict(await call.initial_metadata())
    assert reply.model_name == MODEL
    body = {"request_id": head["x-ab-request-id"], "metric": "conversion", "value": 1}
    async with r.client.post("/abrouter/outcomes", json=body) as resp:
        assert resp.status == 202, await resp.text()
    await r.settle()
    strata = await r.strata()
    credited = {s.variant: s.metrics["conversion"].sum for s in strata.values()}
    assert credited == {head["x-ab-variant"]: 1.0}


async def test_a_model_infer_is_matched_by_its_model_name_and_renamed_per_arm(
    make_grpc_router: MakeGrpcRouter, oip_servers: dict[str, OipServer]
) -> None:
    models = {"control": "recsys-v1", "candidate": "recsys-v2"}
    r = await make_grpc_router({n: s.address for n, s in oip_servers.items()}, models=models, match={"model": MODEL})
    for i in range(20):
        await asyncio.to_thread(_infer, r.grpc_address, [i], user=f"user-{i}")
    seen = {arm: set(s.servicer.models) for arm, s in oip_servers.items()}
    assert seen == {"control": {"recsys-v1"}, "candidate": {"recsys-v2"}}
    with pytest.raises(triton.InferenceServerException) as caught:
        await asyncio.to_thread(_infer, r.grpc_address, [1], user="u1", model="other")
    assert caught.value.status() == "StatusCode.NOT_FOUND" and "no experiment" in caught.value.message()


async def test_a_model_stream_infer_is_matched_by_its_first_messages_model_name_and_renamed_per_arm(
    make_grpc_router: MakeGrpcRouter, oip_servers: dict[str, OipServer]
) -> None:
    models = {"control": "recsys-v1", "candidate": "recsys-v2"}
    r = await make_grpc_router({n: s.address for n, s in oip_servers.items()}, models=models, match={"model": MODEL})
    offsets = {"control": 1000, "candidate": 2000}
    arms = set()
    for i in range(12):
        answers = await asyncio.to_thread(_stream_infer, r.grpc_address, [i, i + 1, i + 2], user=f"user-{i}")
        arm = next(a for a, offset in offsets.items() if answers[0] - i == offset)
        assert answers == [v + offsets[arm] for v in (i, i + 1, i + 2)]  # in order, one arm for the whole stream
        arms.add(arm)
    assert arms == {"control", "candidate"}
    seen = {arm: set(s.servicer.models) for arm, s in oip_servers.items()}
    assert seen == {"control": {"recsys-v1"}, "candidate": {"recsys-v2"}}  # every message renamed, not the first only
    with pytest.raises(triton.InferenceServerException) as caught:
        await asyncio.to_thread(_stream_infer, r.grpc_address, [1], user="u1", model="other")
    assert "no experiment" in caught.value.message()


async def test_a_model_infer_larger_than_the_http2_windows_is_matched_renamed_and_answered_whole(
    make_grpc_router: MakeGrpcRouter, oip_servers: dict[str, OipServer]
) -> None:
    """2.4 MB of tensor: beyond a stream's window (1 MiB) and the first bytes the own server reads the name from."""
    models = {"control": "recsys-v1", "candidate": "recsys-v2"}
    r = await make_grpc_router({n: s.address for n, s in oip_servers.items()}, models=models, match={"model": MODEL})
    values = list(range(600_000))
    out = (await asyncio.to_thread(_infer, r.grpc_address, values, user="big-user")).tolist()
    arm = {1000: "control", 2000: "candidate"}[out[0]]
    assert out == [v + out[0] for v in values]
    assert oip_servers[arm].servicer.models == [models[arm]]
