"""The audit rows orjson writes are json's text byte for byte, or json writes them."""

from __future__ import annotations

import random
import struct

import orjson
import pytest

from abrouter.router.eventlog import audit, slices


def random_row(rng: random.Random) -> tuple[object, ...]:
    def number() -> float:
        kind = rng.random()
        if kind < 0.3:  # any finite double: bits at random
            x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            return x if x == x and abs(x) != float("inf") else 1.5
        if kind < 0.6:
            return rng.random() * 10.0 ** rng.randint(-8, 18)
        return float(rng.randint(-(10**6), 10**6))

    def text() -> str:
        alphabet = "abc019-_\"\\/é\x00\x1f\x7f\u2028 e"
        return "".join(rng.choice(alphabet) if rng.random() < 0.02 else rng.choice("abcdef0123") for _ in range(8))

    return ("exposure", text(), text(), text(), rng.randint(0, 10**12), number(), 200, number(), rng.random() < 0.5)


def test_the_rows_text_is_jsons_whichever_writes_it() -> None:
    rng = random.Random(11)
    same = 0  # slices orjson writes as json does: the fast path was taken
    for _ in range(400):
        rows = [random_row(rng) for _ in range(rng.randint(1, 20))]
        expected = slices.JSON.encode(rows)[1:-1]
        floats = [x for row in rows for x in row if isinstance(x, float)]
        assert audit.inner(rows, all(audit.plain(x) for x in floats)) == expected
        same += orjson.dumps(rows)[1:-1] == expected.encode()
    assert 40 < same < 360  # both paths taken


def test_a_non_finite_float_is_refused_as_json_refuses_it() -> None:
    for x in (float("nan"), float("inf"), -float("inf")):
        assert not audit.plain(x)
        with pytest.raises(ValueError):
            audit.inner([("exposure", "r", "u", "v", 1, x, 200, 1.0, False)], False)
