"""Our HPACK against RFC 7541's own examples (Appendix C) and against python-hyper's `hpack` as a reference."""

from __future__ import annotations

import random
import tracemalloc

import hpack as reference
import pytest

from abrouter.router.h2 import hpack

# RFC 7541 C.4: three requests with Huffman coding, one decoder (the dynamic table carries over).
C4 = [
    (
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")],
        57,
    ),
    (
        "828684be5886a8eb10649cbf",
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
         ("cache-control", "no-cache")],
        110,
    ),
    (
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
         ("custom-key", "custom-value")],
        164,
    ),
]  # fmt: skip

# RFC 7541 C.6: three responses with Huffman coding and a 256-byte table, so entries are evicted.
C6 = [
    (
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        [(":status", "302"), ("cache-control", "private"), ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
         ("location", "https://www.example.com")],
        222,
    ),
    (
        "4883640effc1c0bf",
        [(":status", "307"), ("cache-control", "private"), ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
         ("location", "https://www.example.com")],
        222,
    ),
    (
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af2708"
        "7f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
        [(":status", "200"), ("cache-control", "private"), ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
         ("location", "https://www.example.com"), ("content-encoding", "gzip"),
         ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")],
        215,
    ),
]  # fmt: skip


@pytest.mark.parametrize(("examples", "table_size"), [(C4, 4096), (C6, 256)], ids=["C.4", "C.6"])
def test_the_rfcs_examples_decode_with_the_table_carried_over_and_entries_evicted(
    examples: list[tuple[str, list[tuple[str, str]], int]], table_size: int
) -> None:
    decoder = hpack.Decoder(table_size)
    for block, headers, size in examples:
        assert decoder.decode(bytes.fromhex(block)) == headers
        assert decoder.size == size


def test_the_huffman_code_is_the_rfcs_and_round_trips_every_byte() -> None:
    assert hpack.huffman_encode(b"www.example.com") == bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")  # C.4.1
    every = bytes(range(256)) * 3
    assert hpack.huffman_decode(hpack.huffman_encode(every)) == every


@pytest.mark.parametrize(
    "bad",
    [
        bytes.fromhex("ffffffff"),  # 32 one bits: EOS inside the string
        bytes.fromhex("f1e3c2e5f23a6ba0ab90f4fe"),  # padding that is not the EOS prefix
        bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ffff"),  # more than 7 bits of padding
    ],
)
def test_a_huffman_string_with_eos_or_bad_padding_is_an_error(bad: bytes) -> None:
    with pytest.raises(hpack.HpackError):
        hpack.huffman_decode(bad)


def _random_headers(rng: random.Random) -> list[tuple[str, str]]:
    names = [":method", ":path", "content-type", "x-user-id", "grpc-timeout", "te", "user-agent", "x-custom-bin"]
    return [
        (rng.choice(names), "".join(rng.choice("abc/-_ 019=%\x7f\xe9") for _ in range(rng.randint(0, 40))))
        for _ in range(rng.randint(1, 12))
    ]


def test_what_the_reference_encoder_writes_decodes_the_same_with_indexing_huffman_and_table_size_changes() -> None:
    rng = random.Random(7)
    encoder, ours, theirs = reference.Encoder(), hpack.Decoder(), reference.Decoder()
    for i in range(500):
        if i % 97 == 0:
            encoder.header_table_size = rng.choice([0, 256, 4096])  # a size update in the next block
        headers = _random_headers(rng)
        block = encoder.encode(headers, huffman=bool(i % 2))
        expected = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in theirs.decode(block, raw=True)]
        assert ours.decode(block) == expected
        assert ours.size == theirs.header_table._current_size


def test_what_our_encoder_writes_the_reference_decoder_reads_back() -> None:
    rng = random.Random(11)
    encoder, decoder = hpack.Encoder(), reference.Decoder()
    for _ in range(300):
        headers = [*_random_headers(rng), (":status", "200"), ("content-type", "application/grpc")]
        decoded = decoder.decode(encoder.encode(headers), raw=True)
        assert [(k.decode("latin-1"), v.decode("latin-1")) for k, v in decoded] == headers


def test_a_name_whose_value_changes_every_call_is_written_right_before_and_after_the_encoder_stops_keeping_it() -> None:
    encoder, decoder = hpack.Encoder(), reference.Decoder()
    for n in range(3 * hpack._VOLATILE):  # a request id per call, beside fields that repeat, static and not
        headers = [
            (":status", "200"),
            ("x-ab-request-id", f"id-{n}"),
            ("x-ab-variant", "control"),
            ("content-length", f"{n}"),
        ]
        decoded = decoder.decode(encoder.encode(headers), raw=True)
        assert [(k.decode("latin-1"), v.decode("latin-1")) for k, v in decoded] == headers


@pytest.mark.parametrize(
    "block",
    [
        b"\xbe",  # dynamic index 62 with an empty table
        b"\x80",  # index 0
        b"\x3f\xe2\x1f",  # a table size update to 4097, beyond our 4096
        b"\x04\x85ab",  # a string longer than the block
        b"\x7f",  # an integer cut short
        b"\x83\x20",  # a table size update after a field (RFC 7541 §4.2: only at the start of a block)
    ],
)
def test_a_block_that_does_not_decode_is_an_error(block: bytes) -> None:
    with pytest.raises(hpack.HpackError):
        hpack.Decoder().decode(block)


def test_integers_on_every_prefix_round_trip() -> None:
    for prefix in range(4, 8):
        for value in (0, 1, (1 << prefix) - 2, (1 << prefix) - 1, 1 << prefix, 127, 128, 300, 2**20):
            encoded = hpack.encode_integer(value, prefix, 0)
            assert hpack._integer(encoded, 0, prefix) == (value, len(encoded))


def test_a_small_block_that_stands_for_a_huge_header_list_is_refused() -> None:
    """The same 4 KiB table entry indexed again and again: 4 bytes of block per 4 KiB of headers."""
    decoder = hpack.Decoder()
    entry = reference.Encoder().encode([("x-big", "v" * 4000)])  # a literal with incremental indexing
    decoder.decode(entry)
    assert decoder.decode(b"\xbe" * 10) == [("x-big", "v" * 4000)] * 10  # dynamic index 62, ten times: fine
    with pytest.raises(hpack.HeaderListTooLarge, match="header list beyond"):
        decoder.decode(b"\xbe" * 100 + reference.Encoder().encode([("x-new", "1")]))  # 400 KiB, then a new entry
    assert decoder.table[0] == ("x-new", "1")  # decoded to its end all the same: the table follows the peer's


def test_a_peer_sending_many_distinct_long_huffman_strings_does_not_grow_the_decoder_without_bound() -> None:
    # Symbols of 8-bit codes: their codes concatenate byte for byte, so thousands of distinct strings cost little.
    eight = "&*,;XZ"
    codes = {c: hpack.huffman_encode(c.encode()) for c in eight}
    base = hpack.huffman_encode(b"X" * 16_000)
    decoder = hpack.Decoder()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(300):  # each one distinct: 300 x 16 KB
            value = base + b"".join(codes[eight[n // 6**k % 6]] for k in range(4))  # n in base 6
            block = b"\x00\x01x" + hpack.encode_integer(len(value), 7, 0x80) + value  # literal, not indexed, Huffman
            assert decoder.decode(block)[0][1].startswith("X" * 16_000)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2 << 20, held  # what was decoded is not kept (300 x 32 KB would be 9.6 MB)


def test_an_encoder_fed_many_distinct_long_fields_does_not_grow_without_bound() -> None:
    encoder = hpack.Encoder()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(300):  # a caller's distinct 16 KB metadata values, passed upstream on one connection
            encoder.encode([("x-big", f"{n:05d}" + "v" * 16_000)])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2 << 20, held  # what was encoded is not kept (300 x 32 KB would be 9.6 MB)


def test_a_repeated_indexed_block_decodes_to_what_the_table_says_now_not_what_it_said_when_kept() -> None:
    decoder = hpack.Decoder()
    name_value = bytes([0x40, 3]) + b"x-a" + bytes([1]) + b"1"  # literal with incremental indexing: entry 62
    assert decoder.decode(name_value) == [("x-a", "1")]
    indexed = bytes([0x88, 0x80 | 62])  # :status 200, then dynamic entry 62
    assert decoder.decode(indexed) == [(":status", "200"), ("x-a", "1")]
    first = decoder.decode(indexed)
    first.append(("mutated", "by the caller"))  # a kept list is handed out as a copy
    assert decoder.decode(indexed) == [(":status", "200"), ("x-a", "1")]
    decoder.decode(bytes([0x40, 3]) + b"x-b" + bytes([1]) + b"2")  # entry 62 is now x-b
    assert decoder.decode(indexed) == [(":status", "200"), ("x-b", "2")]
    decoder.decode(bytes([0x20]))  # a size update to 0 empties the table
    with pytest.raises(hpack.HpackError):
        decoder.decode(indexed)


def test_the_decoder_agrees_with_the_reference_on_blocks_that_repeat_between_table_changes() -> None:
    rng = random.Random(7)
    encoder, ours, theirs = reference.Encoder(), hpack.Decoder(), reference.Decoder()
    fixed = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")]
    for _ in range(300):
        headers = fixed if rng.random() < 0.6 else [*fixed, ("x-user-id", f"user-{rng.randint(1, 20)}")]
        block = encoder.encode(headers)
        expected = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in theirs.decode(block, raw=True)]
        assert ours.decode(block) == expected


def test_only_a_few_blocks_are_kept_and_a_per_call_literal_is_decoded_after_the_prefix_its_blocks_share() -> None:
    decoder = hpack.Decoder()
    for n in range(1, 62):
        for m in range(1, 62):
            decoder.decode(bytes([0x80 | n, 0x80 | m]))  # 3,721 distinct indexed-only blocks
    assert len(decoder._blocks) <= 64
    decoder._blocks.clear()
    for n in range(100):  # a unit id, new on every call: a literal without indexing
        block = b"\x83\x00\x09x-user-id" + hpack.encode_integer(len(str(n)), 7, 0) + str(n).encode()
        assert decoder.decode(block) == [(":method", "POST"), ("x-user-id", str(n))]
    assert len(decoder._blocks) <= 2  # the first two, before the prefix they share was learned from them
    assert decoder._prefix is not None and decoder._prefix.raw == b"\x83"


def _literal(name: str, value: str) -> bytes:
    """A literal without indexing, its name written out (no Huffman)."""
    return (
        b"\x00" + hpack.encode_integer(len(name), 7, 0) + name.encode() + hpack.encode_integer(len(value), 7, 0)
    ) + value.encode()


def test_blocks_that_share_a_prefix_decode_as_the_reference_does_across_table_changes_and_forbidden_fields() -> None:
    """Blocks of a fixed head (static, dynamic and literal fields) then per-call literals, between blocks that
    add to the table, resize it or differ from the start: every list as the reference decodes it, and whether
    it has a field RFC 9113 forbids as computed from the list itself."""
    rng = random.Random(5)
    ours, theirs = hpack.Decoder(), reference.Decoder()
    adds = [bytes([0x40, 3]) + b"x-" + bytes([97 + i]) + bytes([1]) + b"v" for i in range(4)]  # entries 62...
    resize = b"\x20\x3f\xe1\x1f" + b"".join(adds)  # the table emptied (size 0), back to 4096, filled again
    heads = [
        b"\x83\x86\xbe" + _literal("te", "trailers"),
        b"\x83\x86\xbe" + _literal("te", "gzip"),  # forbidden: TE other than trailers
        b"\x83\xbf" + _literal("connection", "close"),  # forbidden: connection-specific
        b"\x82" + _literal("X-Upper", "1"),  # forbidden: an upper-case name
    ]
    prefixes = 0
    for block in [resize] + [b""] * 600:
        roll = rng.random()
        if not block:
            tail = b"".join(_literal("x-user-id", str(rng.randint(1, 9))) for _ in range(rng.randint(0, 2)))
            if roll < 0.1:  # the table changed, alone or after a head (which then decodes to other fields)
                tail = rng.choice(adds)
            block = resize if roll < 0.02 else tail if roll < 0.05 else rng.choice(heads * 2) + tail
        expected = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in theirs.decode(block, raw=True)]
        prefix, kept = ours._prefix, ours._blocks.get(block)
        fresh = prefix is not None and prefix.generation == ours.generation
        got = ours.decode(block)
        prefixes += fresh and block.startswith(prefix.raw) and (kept is None or kept.generation != prefix.generation)
        assert got == expected, block
        assert ours.malformed == any(hpack.forbidden(k, v) for k, v in expected)
        assert ours.size == theirs.header_table._current_size
    assert prefixes > 50  # the prefix was there to decode from, not every block decoded whole
