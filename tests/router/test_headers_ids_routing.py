import base64
import bisect
import random

import pytest

from abrouter.contract import experiment as model
from abrouter.router import headers as hdr
from abrouter.router import metrics, requestid
from abrouter.router.errors import ReloadRejected, RequestIdError
from abrouter.router.requestid import RequestIds
from abrouter.router.routing import RoutingTable, next_table
from tests.contract.test_experiment import BASE, spec


def test_hop_by_hop_and_connection_listed_fields_are_dropped():
    headers = [
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("X-Secret-Hop", "1"),
        ("Content-Type", "application/octet-stream"),
        ("Content-Encoding", "gzip"),
        ("Inference-Header-Content-Length", "120"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert hdr.end_to_end(headers) == [
        ("Content-Type", "application/octet-stream"),
        ("Content-Encoding", "gzip"),
        ("Inference-Header-Content-Length", "120"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_upstream_request_headers_rewrite_host_and_add_forwarded():
    out = hdr.upstream_request_headers(
        [
            ("Host", "api.example"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("traceparent", "00-abc-def-01"),
            ("X-AB-Force-Variant", "candidate"),
            ("Content-Type", "application/json"),
        ],
        upstream="http://model-b:8080",
        client_ip="127.0.0.1",
        scheme="http",
    )
    d = dict(out)
    assert d["Host"] == "model-b:8080"
    assert d["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert d["X-Forwarded-Host"] == "api.example" and d["X-Forwarded-Proto"] == "http"
    assert d["traceparent"] == "00-abc-def-01" and d["Content-Type"] == "application/json"
    assert "X-AB-Force-Variant" not in d


def test_response_tags_replace_any_upstream_spoofing():
    out = hdr.tag_response(
        [("X-AB-Variant", "spoofed"), ("X-Model", "b")], experiment="e", variant="candidate", request_id="rid"
    )
    assert out == [
        ("X-Model", "b"),
        ("X-AB-Experiment", "e"),
        ("X-AB-Variant", "candidate"),
        ("X-AB-Request-Id", "rid"),
    ]


def test_request_id_round_trip_and_rejections():
    ids = RequestIds(b"secret\0exp")
    rid = ids.issue(unit_hash="00112233445566ff", epoch=7, variant_index=1, now=1_000_000.0)
    info = ids.decode(rid, now=1_000_010.0, ttl_s=60)
    assert (info.unit_hash, info.epoch, info.variant_index, info.issued_at) == ("00112233445566ff", 7, 1, 1_000_000)
    assert len(rid) == 42 and rid.isascii()
    many = [ids.issue(unit_hash="00112233445566ff", epoch=7, variant_index=1, now=1e6) for _ in range(200)]
    assert {"-", "_"} <= set("".join(many)) and not {"+", "/", "="} & set("".join(many))
    for one in many:  # base64url without its padding, as base64 writes it
        assert base64.urlsafe_b64encode(base64.urlsafe_b64decode(one + "==")).rstrip(b"=").decode() == one
    assert not info.anonymous
    for _ in range(20):  # the flag is one bit of the random part, whatever the other 47 are
        anon = ids.issue(unit_hash="00112233445566ff", epoch=7, variant_index=1, now=1_000_000.0, anonymous=True)
        assert ids.decode(anon, now=1_000_010.0, ttl_s=60).anonymous
    with pytest.raises(RequestIdError, match="expired"):
        ids.decode(rid, now=1_000_100.0, ttl_s=60)
    with pytest.raises(RequestIdError, match="not issued"):
        RequestIds(b"other\0exp").decode(rid, now=1_000_010.0, ttl_s=60)
    tampered = rid[:10] + ("A" if rid[10] != "A" else "B") + rid[11:]
    with pytest.raises(RequestIdError):
        ids.decode(tampered, now=1_000_010.0, ttl_s=60)
    for junk in ["", "x" * 42, "short", "!" * 42]:
        with pytest.raises(RequestIdError):
            ids.decode(junk, now=1_000_010.0, ttl_s=60)


@pytest.mark.parametrize("anonymous", [False, True])
def test_a_request_id_is_the_documented_layout_byte_for_byte(anonymous):
    # unit hash 8 | epoch u32 | variant u8 | issued-at u32 | random 6 (top bit: anonymous) | mac 8, base64url
    ids = RequestIds(b"secret\0exp")
    for seed in range(50):
        ids._rng = random.Random(seed)  # type: ignore[attr-defined]
        rid = ids.issue(unit_hash="00112233445566ff", epoch=7, variant_index=3, now=1_000_000.5, anonymous=anonymous)
        nonce = random.Random(seed).getrandbits(47) | (0x80 << 40 if anonymous else 0)
        body = bytes.fromhex("00112233445566ff") + (7).to_bytes(4, "big") + bytes([3]) + (1_000_000).to_bytes(4, "big")
        body += nonce.to_bytes(6, "big")
        assert len(body) == requestid._BODY.size
        assert base64.urlsafe_b64decode(rid + "==") == body + ids._mac(body)  # type: ignore[attr-defined]


def test_a_histogram_counts_each_latency_in_the_bucket_bisect_gives_it():
    values = [*metrics.BUCKETS_S, 0.0, -1.0, 1e-9, 0.0011, 0.003, 7.0, 10.0001, 1e9, float("inf"), float("nan")]
    for seconds in values:
        h = metrics._Histogram()
        h.observe(seconds)
        assert h.counts.index(1) == bisect.bisect_left(metrics.BUCKETS_S, seconds), seconds


def test_reload_requires_a_higher_epoch_for_new_weights():
    old = RoutingTable(experiment=model.parse(BASE), since=1.0)
    same = next_table(old, model.parse(BASE), now=2.0)
    assert same is old
    moved = spec()
    moved["variants"][1]["weight"] = 90
    with pytest.raises(ReloadRejected, match="epoch did not increase"):
        next_table(old, model.parse(moved), now=2.0)
    moved["epoch"] = 2
    new = next_table(old, model.parse(moved), now=2.0)
    assert new.epoch == 2 and new.since == 2.0 and new.weights_by_name()["candidate"] == 0.6429
    renamed = spec(name="other")
    with pytest.raises(ReloadRejected, match="name and salt"):
        next_table(old, model.parse(renamed), now=2.0)
    fewer = spec(metrics=[])
    with pytest.raises(ReloadRejected, match="metrics can only be appended"):
        next_table(old, model.parse(fewer), now=2.0)
    retyped = spec(metrics=[{"name": "conversion", "kind": "continuous"}, {"name": "revenue", "kind": "continuous"}])
    with pytest.raises(ReloadRejected, match="metrics can only be appended"):
        next_table(old, model.parse(retyped), now=2.0)
    grown = spec(metrics=[*BASE["metrics"], {"name": "clicks", "kind": "binary"}])
    assert next_table(old, model.parse(grown), now=2.0).experiment.metrics[-1].name == "clicks"
    upstream_only = spec()
    upstream_only["variants"][0]["upstream"] = "http://model-a2:8080"
    kept = next_table(old, model.parse(upstream_only), now=3.0)
    assert kept.epoch == 1 and kept.since == 1.0 and kept.experiment.control.upstream == "http://model-a2:8080"


def test_a_header_value_is_read_as_the_utf8_its_bytes_most_likely_are():
    from abrouter.router.exchange import header

    fields = [("content-type", "x"), ("X-User-Id", "user-1"), ("x-name", "caf\xc3\xa9"), ("x-raw", "\xff\xfe")]
    assert header(fields, "x-user-id") == "user-1"  # names in any case
    assert header([("x-user-id", "u2")], "X-User-Id") == "u2"
    assert header(fields, "X-Name") == "café"  # UTF-8 bytes, received as latin-1 text
    assert header(fields, "x-raw") == "\udcff\udcfe"  # not UTF-8: kept byte for byte
    assert header(fields, "x-missing") is None
