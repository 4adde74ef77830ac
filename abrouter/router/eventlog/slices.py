"""JSON arrays encoded a slice at a time, so a big batch never holds the event loop in one piece. Pure.

The encoders are generators that yield after each slice of `SLICE` rows and return the
text; `abrouter.router.eventlog.log.encode_batch` awaits between the steps, `drain` runs
them straight through. A 50k-event batch encoded in one piece held the event loop for
~240 ms (bench/loop_stall.py, bench/README.md). A thread does not help: the json module's
C encoder keeps the GIL for the whole of one call.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

#: Rows (events: each its cell and its audit row; keyed outcomes) encoded between two
#: yields: ~0.2 ms of CPU (~0.8-1 µs an event, issue 17's g17e; ~1.2 µs a row, cells and audit
#: rows apart, before), so that a request arriving mid-flush waits at most that long for the
#: loop. 1,000 held it ~1.2-2.5 ms a step at a busy router's batch (`log.BATCH_EVENTS`):
#: bench/eventlog_feed.py, bench/README.md. A yield costs a loop turn (a few µs).
SLICE = 250

# One encoder, built once: json.dumps(separators=...) builds a new one on every call.
JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def drain(steps: Generator[None, None, T]) -> T:
    """Run a sliced encoding to its end, without yielding to anyone."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def encode_rows(rows: Iterable[Sequence[object] | None], size: int = SLICE) -> Generator[None, None, str]:
    """One JSON array, built `size` rows at a time with a yield after each slice.

    The same text as one ``JSON.encode(list(rows))`` (the separators have no spaces),
    except that None rows are left out: they let a scan that skips most of what it looks
    at be sliced too.
    """
    parts: list[str] = []
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        if kept := [row for row in chunk if row is not None]:
            parts.append(JSON.encode(kept)[1:-1])
        yield
    return "[" + ",".join(parts) + "]"


def pack_rows(
    rows: Iterable[Sequence[object] | None], pack: Callable[[Sequence[object]], bytes], size: int = SLICE
) -> Generator[None, None, tuple[bytes, int]]:
    """`rows` packed one after another (None rows left out) and how many, `size` rows at a
    time with a yield after each slice, like `encode_rows`."""
    parts: list[bytes] = []
    count = 0
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        kept = [pack(row) for row in chunk if row is not None]
        parts += kept
        count += len(kept)
        yield
    return b"".join(parts), count


def join_arrays(texts: Sequence[str]) -> str:
    """Several encoded JSON arrays as one (their rows in order), without decoding them."""
    if len(texts) == 1:
        return texts[0]
    return "[" + ",".join(inner for text in texts if (inner := text[1:-1])) + "]"


def slot(name: str) -> str:
    """A placeholder for a pre-encoded array in a document, for `splice`."""
    # NULs cannot occur in metric names, ids or epoch infos: the placeholder is unique.
    return f"\x00{name}\x00"


def splice(text: str, arrays: dict[str, str]) -> str:
    """Put pre-encoded arrays into `text` at their `slot` placeholders, which it holds in `arrays`' order.

    One join: a ``str.replace`` per slot would copy (and scan) the megabytes each time.
    """
    pieces, rest = [], text
    for name, value in arrays.items():
        head, found, rest = rest.partition(JSON.encode(slot(name)))
        if not found:
            raise ValueError(f"no slot {name!r} in the document, or slots out of order")
        pieces += [head, value]
    return "".join([*pieces, rest])
