"""The audit stream's rows, as one JSON array: json's text, written by orjson when that is the same text. Pure.

The raw events ride along with each batch as one JSON array of rows
(`abrouter.router.eventlog.events.encode_events`), kept in the capped audit stream. At a
busy router that is a row per call, and the json module's C encoder took ~1-2 µs a row of
nine scalars on the bench machine (its per-item dispatch, and ~0.3 µs for each float's
``repr``); orjson writes the same row in ~0.15 µs (bench/eventlog_cost.py, bench/README.md).

Its text is json's, byte for byte, but for three things, each kept from orjson here so
that a slice with one is written by json instead: a float below 1e-4 in magnitude (orjson
writes ``1e-5`` where ``repr`` writes ``1e-05``) or not finite (orjson writes null; json
refuses it, and so does this, with ValueError), which the callers check as they build the
rows (`plain`); and a string with a non-ASCII character or DEL (json escapes them,
``ensure_ascii``), which shows in orjson's bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import orjson

# The encoder of `slices.JSON` (the same settings): the slow path, and the reference.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def plain(x: float) -> bool:
    """Whether orjson writes `x` as json does (``repr``): finite, and 0 or at least 1e-4 in magnitude."""
    return x == 0.0 or 1e-4 <= abs(x) < math.inf


def inner(rows: Sequence[Sequence[object]], floats_plain: bool) -> str:
    """The JSON array of `rows` without its brackets, as `slices.JSON` writes it;
    `floats_plain`: every float in them is `plain` (else json writes them, or refuses)."""
    if floats_plain:
        text: bytes = orjson.dumps(rows)  # typed here: mypyc's build may not see orjson's stubs
        if text.isascii() and b"\x7f" not in text:
            return text[1:-1].decode("ascii")
    return _JSON.encode(rows)[1:-1]
