"""A batch's cells as flush.lua reads them, in every version of the batch format. Pure.

A cell is one (unit, epoch, variant) of a batch (`abrouter.router.eventlog.events.Aggregator`):
``[h, e, v, latest, n, dx_errors, dx_latency_ms, dx_slow_requests, dx_m, count_m, ...]``
and, with covariates, a report time per covariate (docs/storage.md, "The batch format").
Versions 1-4 send them as a JSON array of arrays (1-3 with a count after every value),
version 5 as one flat JSON array of ``width`` values per cell, version 6 apart from the
JSON document (`Batch.cells`), packed with `struct`: per cell h and v zero-terminated, every
number a little-endian double (``"<sds"`` then ``width - 3`` ``"d"``), which flush.lua reads
a few hundred cells per ``struct.unpack`` call, a third of what cjson took for the same
values (bench/lua_prims.py). Version 7 sends each cell's h as the unit's record field,
``h|u`` (`UNIT_FIELD`), which flush.lua then need not build per unit, and each unit's cells
one after another (`in_runs`), so that flush.lua reads and writes its record once per run.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

_DOUBLE = struct.Struct("<d")
#: [version 7] What follows h in a packed cell: the unit's record field is h + UNIT_FIELD.
UNIT_FIELD = "|u"
_UNIT_SUFFIX = UNIT_FIELD.encode() + b"\0"


def _suffix(version: int) -> bytes:
    return UNIT_FIELD.encode() if version >= 7 else b""


class Packer:
    """Packs the cells of one width (version 6, or 7: h as its record field), one row at a time."""

    def __init__(self, width: int, version: int) -> None:
        self._rest = struct.Struct("<" + "d" * (width - 3))
        self._suffix = _suffix(version)

    def pack(self, row: Sequence[Any]) -> bytes:
        """``[h, e, v, latest, n, ...]`` as flush.lua reads it. h and v hold no NUL (a unit
        hash, a variant name)."""
        h, rest = row[0].encode() + self._suffix, self._rest.pack(*row[3:])
        return b"".join((h, b"\0", _DOUBLE.pack(row[1]), row[2].encode(), b"\0", rest))


class SinglePacker:
    """Packs the cell of a unit's only event in a batch, an exposure, straight from its values
    (version 7): ``[h|u, e, v, latest, 1, error, latency_ms, slow, 0, ...]``. The bytes are what
    `Packer` makes of the cell `events.Aggregator` would fold, without the cell."""

    def __init__(self, width: int) -> None:
        # latest, n, errors, latency_ms, slow_requests; every other value of the cell is 0
        self._head = struct.Struct(f"<5d{8 * (width - 8)}x")
        #: variant -> (epoch, what follows h: the epoch packed and the variant zero-terminated)
        self._strata: dict[str, tuple[int, bytes]] = {}

    def pack(
        self, h: str, epoch: int, variant: str, latest: float, error: bool, latency_ms: float, slow: bool
    ) -> bytes:
        stratum = self._strata.get(variant)
        if stratum is None or stratum[0] != epoch:
            stratum = self._strata[variant] = (epoch, _DOUBLE.pack(epoch) + variant.encode() + b"\0")
        values = self._head.pack(
            latest, 1.0, 1.0 if error else 0.0, 0.0 + latency_ms, 1.0 if slow else 0.0
        )  # the sum a cell folds
        return b"".join((h.encode(), _UNIT_SUFFIX, stratum[1], values))


def spans(blob: bytes, width: int, version: int) -> Iterator[tuple[str, int, int]]:
    """Pure: (h, start, end) of each packed cell of `blob` (batch format `version`), in order."""
    rest = 8 * (width - 3)
    cut = len(_suffix(version))
    at = 0
    while at < len(blob):
        h_end = blob.index(b"\0", at)
        v_end = blob.index(b"\0", h_end + 9)
        end = v_end + 1 + rest
        if end > len(blob):
            raise ValueError("packed cells end inside a cell")
        if not blob.endswith(_suffix(version), at, h_end):
            raise ValueError("a packed cell's unit is not its record field")
        yield blob[at : h_end - cut].decode(), at, end
        at = end


def unpack(blob: bytes, width: int, version: int) -> list[list[Any]]:
    """Pure: the cells of `blob` (numbers as floats, integral ones as ints, like JSON's)."""
    rest = struct.Struct("<" + "d" * (width - 3))
    out = []
    cut = len(_suffix(version))
    for h, start, _ in spans(blob, width, version):
        e_at = start + len(h.encode()) + cut + 1
        v_end = blob.index(b"\0", e_at + 8)
        numbers = (_DOUBLE.unpack_from(blob, e_at)[0], *rest.unpack_from(blob, v_end + 1))
        e, *values = (int(x) if x.is_integer() else x for x in numbers)
        out.append([h, e, blob[e_at + 8 : v_end].decode(), *values])
    return out


def in_runs(rows: Sequence[list[Any]]) -> list[list[Any]]:
    """Pure: `rows` (cells) with each unit's (``row[0]``) together, in their order, the units in
    the order of their first row: the order of version 7 (`events.Aggregator.encode`)."""
    by_unit: dict[str, list[list[Any]]] = {}
    for row in rows:
        by_unit.setdefault(row[0], []).append(row)
    return [row for run in by_unit.values() for row in run]


def width_of(doc: Mapping[str, Any]) -> int:
    """Pure: the values in one cell of a version-5 or 6 payload: [h, e, v, latest, n], a value
    per built-in, a value and a count per other metric, [cuped] a report time per covariate."""
    nb, nm = doc.get("builtins", 2), len(doc["metrics"])
    covariates = len(doc.get("covariates", ())) or int("covariate" in doc)
    return int(5 + nb + 2 * (nm - nb) + covariates)


def cells_of(doc: Mapping[str, Any], packed: bytes = b"") -> list[list[Any]]:
    """Pure: the cells of a decoded payload of any version (`packed`: version 6's), one list each."""
    version = doc.get("v", 1)
    if version >= 6:
        return unpack(packed, int(doc["width"]), version)
    cells = doc.get("cells", [])
    if version < 5:
        return list(cells)
    width = int(doc["width"])
    return [cells[i : i + width] for i in range(0, len(cells), width)]


def as_version(payload: str, packed: bytes, version: int) -> tuple[str, bytes]:
    """A batch's (payload, packed cells) in the layout of `version`, marked so: packed with
    record fields (7), packed (6),
    flat (5), nested (4), and from 1 to 3 each built-in's count (the cell's n) after its
    value. What a flush.lua from before `version` + 1 reads. For tests and
    bench/flush_cost.py's "before" script; the router sends `events.BATCH_VERSION`."""
    doc = json.loads(payload)
    nb = doc.get("builtins", 2)
    cells = cells_of(doc, packed)
    for name in ("width", "ncells", "cells"):
        doc.pop(name, None)
    if version < 4:
        cells = [[*c[:5], *(x for dx in c[5 : 5 + nb] for x in (dx, c[4])), *c[5 + nb :]] for c in cells]
    doc["v"] = version
    if version >= 7:
        cells = in_runs(cells)
    if version >= 6:
        width = doc["width"] = width_of(doc)
        doc["ncells"] = len(cells)
        packer = Packer(width, version)
        return json.dumps(doc), b"".join(packer.pack(c) for c in cells)
    if version == 5:
        doc["width"] = width_of(doc)
        cells = [x for c in cells for x in c]
    doc["cells"] = cells
    return json.dumps(doc), b""
