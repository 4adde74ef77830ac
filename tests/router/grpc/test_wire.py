"""The gRPC adapter's pure parts: status codes, metadata, and the OIP model name in raw bytes."""

from __future__ import annotations

import time

import grpc
import pytest
import yaml
from tritonclient.grpc import service_pb2

from abrouter.contract import experiment as model
from abrouter.router import exposures
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.exchange import Exchange, Failure, Incoming, Problem
from abrouter.router.grpc import oip, relay, wire
from abrouter.router.routing import RoutingTable
from abrouter.router.state import Lane, Lanes, Router, request_ids


def test_the_codes_are_grpcs_own_numbers() -> None:
    for code in grpc.StatusCode:
        assert getattr(wire, code.name) == code.value[0]


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        (wire.OK, 200, False),
        (wire.CANCELLED, 499, False),
        (wire.INVALID_ARGUMENT, 400, False),
        (wire.NOT_FOUND, 404, False),
        (wire.RESOURCE_EXHAUSTED, 429, False),
        (wire.UNAUTHENTICATED, 401, False),
        (wire.UNKNOWN, 500, True),
        (wire.DEADLINE_EXCEEDED, 504, True),
        (wire.UNIMPLEMENTED, 501, True),
        (wire.INTERNAL, 500, True),
        (wire.UNAVAILABLE, 503, True),
        (wire.DATA_LOSS, 500, True),
        (99, 500, True),
    ],
)
def test_a_code_maps_to_its_http_status_and_server_failures_are_errors_of_the_variant(
    code: int, status: int, error: bool
) -> None:
    assert wire.http_status(code) == status
    assert wire.is_error(code) is error


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (Failure.UPSTREAM_UNAVAILABLE, wire.UNAVAILABLE),
        (Failure.UPSTREAM_TIMEOUT, wire.DEADLINE_EXCEEDED),
        (Failure.INTERNAL, wire.INTERNAL),
        (Failure.UNKNOWN_VARIANT, wire.INVALID_ARGUMENT),
        (Failure.BAD_TARGET, wire.INVALID_ARGUMENT),
        (Failure.NO_EXPERIMENT, wire.NOT_FOUND),
    ],
)
def test_every_failure_of_the_driver_renders_as_a_code_with_its_message_and_lowercase_tags(
    failure: Failure, code: int
) -> None:
    problem = Problem(failure, "variant 'b': upstream x", variant="b", headers=[("X-AB-Variant", "b")])
    assert wire.render(problem) == (code, "variant 'b': upstream x", [("x-ab-variant", "b")])


def test_every_failure_has_a_code() -> None:
    assert set(wire.CODE_OF_FAILURE) == set(Failure)


def test_upstream_metadata_keeps_the_callers_appends_x_forwarded_for_and_drops_the_override() -> None:
    md = [
        ("x-user-id", "u1"),
        ("trace-bin", b"\x00"),
        ("x-forwarded-for", "10.0.0.9"),
        ("x-ab-force-variant", "candidate"),
        ("x-ab-variant", "spoofed"),
        ("user-agent", "grpc-python"),
    ]
    assert wire.upstream_metadata(md, client_ip="10.0.0.1") == [
        ("x-user-id", "u1"),
        ("trace-bin", b"\x00"),
        ("x-forwarded-for", "10.0.0.9, 10.0.0.1"),
    ]
    assert wire.text_headers(md)[:2] == [("x-user-id", "u1"), ("x-forwarded-for", "10.0.0.9")]


@pytest.mark.parametrize(
    ("peer", "ip"),
    [("ipv4:10.1.2.3:5000", "10.1.2.3"), ("ipv6:[::1]:5000", "::1"), ("ipv6:%5B::1%5D:5000", "::1"), ("unix:/s", "")],
)
def test_the_peer_address_of_a_call(peer: str, ip: str) -> None:
    assert wire.peer_ip(peer) == ip


def _request(name: str) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(
        model_name=name,
        model_version="3",
        id="req-1",
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="INT32", shape=[4])],
        raw_input_contents=[bytes(range(16)), b"\x01" * 300_000],
    )


def test_the_model_name_of_a_real_model_infer_request_is_read_from_its_bytes() -> None:
    assert oip.model_name(_request("recsys").SerializeToString()) == "recsys"
    assert oip.model_name(_request("").SerializeToString()) is None  # proto3 leaves an empty name out
    assert oip.model_name(b"") is None


def test_a_rewritten_model_name_is_what_protobuf_parses_and_every_other_field_is_kept() -> None:
    original = _request("recsys")
    rewritten = oip.with_model_name(original.SerializeToString(), "recsys-v2-ünï")
    parsed = service_pb2.ModelInferRequest.FromString(rewritten)
    assert parsed.model_name == "recsys-v2-ünï"
    original.model_name = "recsys-v2-ünï"
    assert parsed == original
    assert oip.model_name(rewritten) == "recsys-v2-ünï"


def test_a_repeated_model_name_reads_as_protobuf_does_and_is_rewritten_whole() -> None:
    twice = _request("first").SerializeToString() + service_pb2.ModelInferRequest(model_name="last").SerializeToString()
    assert service_pb2.ModelInferRequest.FromString(twice).model_name == oip.model_name(twice) == "last"
    once = oip.with_model_name(twice, "only")
    assert service_pb2.ModelInferRequest.FromString(once).model_name == "only"
    assert once.count(b"first") == once.count(b"last") == 0


def test_the_model_name_of_a_large_request_is_read_and_rewritten_from_its_first_bytes() -> None:
    whole = _request("recsys").SerializeToString()
    prefix = whole[:1000]  # the tensor's 300 KB are still to come
    assert oip.name_in_prefix(prefix) == "recsys"
    renamed = oip.renamed_prefix(prefix, "recsys-v2")
    assert renamed is not None
    parsed = service_pb2.ModelInferRequest.FromString(renamed + whole[1000:])
    expected = _request("recsys-v2")
    assert parsed == expected
    assert oip.name_in_prefix(whole[:2]) is None and oip.renamed_prefix(whole[:2], "x") is None  # not whole yet
    assert oip.name_in_prefix(_request("").SerializeToString()[:1000]) is None


def test_grpc_message_frames_are_cut_whole_and_the_rest_held() -> None:
    data = oip.framed(0, b"one") + oip.framed(1, b"two") + oip.framed(0, b"three")[:4]
    assert oip.message_frames(data) == ([(0, b"one"), (1, b"two")], oip.framed(0, b"three")[:4])


@pytest.mark.parametrize(
    "junk", [b"\x0a\x05ab", b"\x0b", b"\x80", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x00\x01"]
)
def test_bytes_that_are_not_protobuf_have_no_model_name_and_cannot_be_rewritten(junk: bytes) -> None:
    assert oip.model_name(junk) is None
    with pytest.raises(ValueError, match="not a protobuf message"):
        oip.with_model_name(junk, "x")


def test_the_infer_methods_are_the_ones_that_carry_a_model_infer_request() -> None:
    assert "/inference.GRPCInferenceService/ModelInfer" in oip.INFER_METHODS
    assert "/inference.GRPCInferenceService/ModelReady" not in oip.INFER_METHODS


@pytest.mark.parametrize(
    ("path", "exposure"),
    [
        ("/inference.GRPCInferenceService/ModelInfer", True),
        ("/inference.GRPCInferenceService/ModelStreamInfer", True),
        ("/my.Recommender/Recommend", True),
        ("/inference.GRPCInferenceService/ServerLive", False),
        ("/inference.GRPCInferenceService/ServerReady", False),
        ("/inference.GRPCInferenceService/ModelReady", False),
        ("/inference.GRPCInferenceService/ServerMetadata", False),
        ("/inference.GRPCInferenceService/ModelMetadata", False),
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.Health/Watch", False),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", False),
    ],
)
def test_by_default_only_inference_calls_are_exposures(path: str, exposure: bool) -> None:
    assert exposures.is_exposure("POST", path, ()) is exposure


@pytest.mark.parametrize("unit", ["{header: X-User-Id}", "{cookie: uid}"])
def test_the_relays_tags_are_the_exchanges_response_headers_in_lower_case(unit: str) -> None:
    spec = f"""
name: tags
unit: {unit}
variants:
  - {{name: control, upstream: "http://127.0.0.1:9", grpc_upstream: "127.0.0.1:9", weight: 50}}
  - {{name: candidate, upstream: "http://127.0.0.1:9", grpc_upstream: "127.0.0.1:9", weight: 50}}
"""
    experiment = model.parse(yaml.safe_load(spec))
    lane = Lane(
        table=RoutingTable(experiment=experiment, since=time.time()),
        eventlog=DisabledEventLog(),
        ids=request_ids(b"", experiment),
        transport=None,  # type: ignore[arg-type]  # nothing is sent
    )
    router = Router(lanes=Lanes([lane]))
    method = "/inference.GRPCInferenceService/ModelInfer"
    incoming = Incoming("POST", method, [("x-user-id", "u1")], "127.0.0.1", "http")
    ex = Exchange.start(router, incoming, now=time.time())
    assert relay._tags(ex) == wire.h2_tags(ex.response_headers([]))
    names = [name for name, _ in relay._tags(ex)]
    assert names[:3] == ["x-ab-experiment", "x-ab-variant", "x-ab-request-id"]
    assert ("set-cookie" in names) == (unit == "{cookie: uid}")  # a unit id made up: the general path
