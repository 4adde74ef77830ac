"""HPACK (RFC 7541): the header compression of HTTP/2. Pure: bytes in, header lists out.

`Decoder` reads header blocks: indexed fields, literals with and without indexing, the
dynamic table (its size bounded by our SETTINGS_HEADER_TABLE_SIZE, 4096) and its size
updates, and Huffman-coded strings. Most strings repeat from call to call (a user agent,
``application/grpc``, a method path), so each decoder keeps the strings it decoded by
their raw bytes and decodes each one once. Whole blocks repeat too (an upstream's
``:status 200`` head and ``grpc-status 0`` trailers are the same few bytes on every call):
a block that adds nothing to the dynamic table decodes to a pure function of its bytes and
the table, so each decoder keeps a few such blocks' header lists by their bytes, valid
while the table has not changed since (`Decoder.generation`). A request's head repeats but
for its last fields (a unit id, a deadline): the decoder also keeps the fields that two
blocks in a row share at their start, and decodes only the rest of a block that starts
with them. It notes, per field decoded, whether RFC 9113 §8.2 forbids it (`forbidden`,
kept with the blocks), so the connection need not look at every field of every list.

`Encoder` is cheap on purpose: it never indexes (no dynamic table, so nothing to evict
and no size update to send), uses the static table for whole fields and for names, and
writes values as they are (no Huffman): on loopback and in a data centre the bytes
cost less than the CPU to squeeze them. Names and values are ``str`` decoded as
latin-1 both ways, so any byte passes unchanged (``-bin`` values are base64 anyway).
"""

from __future__ import annotations

from collections import deque
from typing import Final, cast

#: RFC 7541 Appendix A.
STATIC_TABLE: Final[tuple[tuple[str, str], ...]] = (
    (':authority', ''),
    (':method', 'GET'),
    (':method', 'POST'),
    (':path', '/'),
    (':path', '/index.html'),
    (':scheme', 'http'),
    (':scheme', 'https'),
    (':status', '200'),
    (':status', '204'),
    (':status', '206'),
    (':status', '304'),
    (':status', '400'),
    (':status', '404'),
    (':status', '500'),
    ('accept-charset', ''),
    ('accept-encoding', 'gzip, deflate'),
    ('accept-language', ''),
    ('accept-ranges', ''),
    ('accept', ''),
    ('access-control-allow-origin', ''),
    ('age', ''),
    ('allow', ''),
    ('authorization', ''),
    ('cache-control', ''),
    ('content-disposition', ''),
    ('content-encoding', ''),
    ('content-language', ''),
    ('content-length', ''),
    ('content-location', ''),
    ('content-range', ''),
    ('content-type', ''),
    ('cookie', ''),
    ('date', ''),
    ('etag', ''),
    ('expect', ''),
    ('expires', ''),
    ('from', ''),
    ('host', ''),
    ('if-match', ''),
    ('if-modified-since', ''),
    ('if-none-match', ''),
    ('if-range', ''),
    ('if-unmodified-since', ''),
    ('last-modified', ''),
    ('link', ''),
    ('location', ''),
    ('max-forwards', ''),
    ('proxy-authenticate', ''),
    ('proxy-authorization', ''),
    ('range', ''),
    ('referer', ''),
    ('refresh', ''),
    ('retry-after', ''),
    ('server', ''),
    ('set-cookie', ''),
    ('strict-transport-security', ''),
    ('transfer-encoding', ''),
    ('user-agent', ''),
    ('vary', ''),
    ('via', ''),
    ('www-authenticate', ''),
)

#: RFC 7541 Appendix B: (code, length in bits) of each symbol 0..255 and EOS (256).
HUFFMAN_CODES: Final[tuple[tuple[int, int], ...]] = (
    (0x1FF8, 13),
    (0x7FFFD8, 23),
    (0xFFFFFE2, 28),
    (0xFFFFFE3, 28),
    (0xFFFFFE4, 28),
    (0xFFFFFE5, 28),
    (0xFFFFFE6, 28),
    (0xFFFFFE7, 28),
    (0xFFFFFE8, 28),
    (0xFFFFEA, 24),
    (0x3FFFFFFC, 30),
    (0xFFFFFE9, 28),
    (0xFFFFFEA, 28),
    (0x3FFFFFFD, 30),
    (0xFFFFFEB, 28),
    (0xFFFFFEC, 28),
    (0xFFFFFED, 28),
    (0xFFFFFEE, 28),
    (0xFFFFFEF, 28),
    (0xFFFFFF0, 28),
    (0xFFFFFF1, 28),
    (0xFFFFFF2, 28),
    (0x3FFFFFFE, 30),
    (0xFFFFFF3, 28),
    (0xFFFFFF4, 28),
    (0xFFFFFF5, 28),
    (0xFFFFFF6, 28),
    (0xFFFFFF7, 28),
    (0xFFFFFF8, 28),
    (0xFFFFFF9, 28),
    (0xFFFFFFA, 28),
    (0xFFFFFFB, 28),
    (0x14, 6),
    (0x3F8, 10),
    (0x3F9, 10),
    (0xFFA, 12),
    (0x1FF9, 13),
    (0x15, 6),
    (0xF8, 8),
    (0x7FA, 11),
    (0x3FA, 10),
    (0x3FB, 10),
    (0xF9, 8),
    (0x7FB, 11),
    (0xFA, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1A, 6),
    (0x1B, 6),
    (0x1C, 6),
    (0x1D, 6),
    (0x1E, 6),
    (0x1F, 6),
    (0x5C, 7),
    (0xFB, 8),
    (0x7FFC, 15),
    (0x20, 6),
    (0xFFB, 12),
    (0x3FC, 10),
    (0x1FFA, 13),
    (0x21, 6),
    (0x5D, 7),
    (0x5E, 7),
    (0x5F, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6A, 7),
    (0x6B, 7),
    (0x6C, 7),
    (0x6D, 7),
    (0x6E, 7),
    (0x6F, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xFC, 8),
    (0x73, 7),
    (0xFD, 8),
    (0x1FFB, 13),
    (0x7FFF0, 19),
    (0x1FFC, 13),
    (0x3FFC, 14),
    (0x22, 6),
    (0x7FFD, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2A, 6),
    (0x7, 5),
    (0x2B, 6),
    (0x76, 7),
    (0x2C, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2D, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7A, 7),
    (0x7B, 7),
    (0x7FFE, 15),
    (0x7FC, 11),
    (0x3FFD, 14),
    (0x1FFD, 13),
    (0xFFFFFFC, 28),
    (0xFFFE6, 20),
    (0x3FFFD2, 22),
    (0xFFFE7, 20),
    (0xFFFE8, 20),
    (0x3FFFD3, 22),
    (0x3FFFD4, 22),
    (0x3FFFD5, 22),
    (0x7FFFD9, 23),
    (0x3FFFD6, 22),
    (0x7FFFDA, 23),
    (0x7FFFDB, 23),
    (0x7FFFDC, 23),
    (0x7FFFDD, 23),
    (0x7FFFDE, 23),
    (0xFFFFEB, 24),
    (0x7FFFDF, 23),
    (0xFFFFEC, 24),
    (0xFFFFED, 24),
    (0x3FFFD7, 22),
    (0x7FFFE0, 23),
    (0xFFFFEE, 24),
    (0x7FFFE1, 23),
    (0x7FFFE2, 23),
    (0x7FFFE3, 23),
    (0x7FFFE4, 23),
    (0x1FFFDC, 21),
    (0x3FFFD8, 22),
    (0x7FFFE5, 23),
    (0x3FFFD9, 22),
    (0x7FFFE6, 23),
    (0x7FFFE7, 23),
    (0xFFFFEF, 24),
    (0x3FFFDA, 22),
    (0x1FFFDD, 21),
    (0xFFFE9, 20),
    (0x3FFFDB, 22),
    (0x3FFFDC, 22),
    (0x7FFFE8, 23),
    (0x7FFFE9, 23),
    (0x1FFFDE, 21),
    (0x7FFFEA, 23),
    (0x3FFFDD, 22),
    (0x3FFFDE, 22),
    (0xFFFFF0, 24),
    (0x1FFFDF, 21),
    (0x3FFFDF, 22),
    (0x7FFFEB, 23),
    (0x7FFFEC, 23),
    (0x1FFFE0, 21),
    (0x1FFFE1, 21),
    (0x3FFFE0, 22),
    (0x1FFFE2, 21),
    (0x7FFFED, 23),
    (0x3FFFE1, 22),
    (0x7FFFEE, 23),
    (0x7FFFEF, 23),
    (0xFFFEA, 20),
    (0x3FFFE2, 22),
    (0x3FFFE3, 22),
    (0x3FFFE4, 22),
    (0x7FFFF0, 23),
    (0x3FFFE5, 22),
    (0x3FFFE6, 22),
    (0x7FFFF1, 23),
    (0x3FFFFE0, 26),
    (0x3FFFFE1, 26),
    (0xFFFEB, 20),
    (0x7FFF1, 19),
    (0x3FFFE7, 22),
    (0x7FFFF2, 23),
    (0x3FFFE8, 22),
    (0x1FFFFEC, 25),
    (0x3FFFFE2, 26),
    (0x3FFFFE3, 26),
    (0x3FFFFE4, 26),
    (0x7FFFFDE, 27),
    (0x7FFFFDF, 27),
    (0x3FFFFE5, 26),
    (0xFFFFF1, 24),
    (0x1FFFFED, 25),
    (0x7FFF2, 19),
    (0x1FFFE3, 21),
    (0x3FFFFE6, 26),
    (0x7FFFFE0, 27),
    (0x7FFFFE1, 27),
    (0x3FFFFE7, 26),
    (0x7FFFFE2, 27),
    (0xFFFFF2, 24),
    (0x1FFFE4, 21),
    (0x1FFFE5, 21),
    (0x3FFFFE8, 26),
    (0x3FFFFE9, 26),
    (0xFFFFFFD, 28),
    (0x7FFFFE3, 27),
    (0x7FFFFE4, 27),
    (0x7FFFFE5, 27),
    (0xFFFEC, 20),
    (0xFFFFF3, 24),
    (0xFFFED, 20),
    (0x1FFFE6, 21),
    (0x3FFFE9, 22),
    (0x1FFFE7, 21),
    (0x1FFFE8, 21),
    (0x7FFFF3, 23),
    (0x3FFFEA, 22),
    (0x3FFFEB, 22),
    (0x1FFFFEE, 25),
    (0x1FFFFEF, 25),
    (0xFFFFF4, 24),
    (0xFFFFF5, 24),
    (0x3FFFFEA, 26),
    (0x7FFFF4, 23),
    (0x3FFFFEB, 26),
    (0x7FFFFE6, 27),
    (0x3FFFFEC, 26),
    (0x3FFFFED, 26),
    (0x7FFFFE7, 27),
    (0x7FFFFE8, 27),
    (0x7FFFFE9, 27),
    (0x7FFFFEA, 27),
    (0x7FFFFEB, 27),
    (0xFFFFFFE, 28),
    (0x7FFFFEC, 27),
    (0x7FFFFED, 27),
    (0x7FFFFEE, 27),
    (0x7FFFFEF, 27),
    (0x7FFFFF0, 27),
    (0x3FFFFEE, 26),
    (0x3FFFFFFF, 30),
)

#: The dynamic table's size before any update, and the most our SETTINGS allow.
DEFAULT_TABLE_SIZE: Final = 4096
_EOS: Final = 256
_LENGTHS: Final = tuple(sorted({length for _, length in HUFFMAN_CODES}))
_HUFFMAN_DECODE: Final = {(length, code): symbol for symbol, (code, length) in enumerate(HUFFMAN_CODES)}


def _by_name_and_value(table: tuple[tuple[str, str], ...]) -> dict[str, dict[str, int]]:
    """The table's fields by name, then value: their first index."""
    found: dict[str, dict[str, int]] = {}
    for index, (name, value) in enumerate(table, 1):
        found.setdefault(name, {}).setdefault(value, index)
    return found


_STATIC_FIELDS: Final = _by_name_and_value(STATIC_TABLE)
_STATIC_NAMES: Final = {name: index for index, (name, _) in reversed(list(enumerate(STATIC_TABLE, 1)))}
#: The most a decoded header list may hold (RFC 9113 §6.5.2's size: names, values, 32 each;
#: the connection advertises it as SETTINGS_MAX_HEADER_LIST_SIZE). A small block can stand for
#: much more (the same table entry indexed again and again).
MAX_LIST_SIZE: Final = 64 * 1024
#: Decoded strings kept per decoder; beyond it the cache starts over (callers choose the strings).
_CACHE_LIMIT: Final = 4096
#: Indexed-only header blocks kept per decoder (a peer repeats a few: a head, trailers); beyond it, start over.
_BLOCK_LIMIT: Final = 64
#: The longest string (Huffman-coded bytes) the decoder keeps, and field (written) the encoder keeps: those
#: that repeat are short, and a peer's long ones would hold up to 4096 of them, hundreds of MB per connection.
_CACHE_STRING: Final = 256
#: The most bytes of block a decoder keeps as the prefix its blocks share (see `Decoder`).
_PREFIX_LIMIT: Final = 1024
#: The static table's fields as objects (the decoder hands out these tuples, not new ones: see `Decoder.table`).
_STATIC_BOXED: Final[list[object]] = list(STATIC_TABLE)
#: Distinct values of one name the encoder keeps before it takes the name's values for per-call ones (see `Encoder`).
_VOLATILE: Final = 64


class HpackError(Exception):
    """A header block that does not decode: a connection error (COMPRESSION_ERROR) in HTTP/2."""


class HeaderListTooLarge(Exception):
    """A block that decoded, table and all, to a header list beyond the decoder's `max_list_size`.

    Not an `HpackError`: the dynamic table still follows the peer's, so HTTP/2 resets only
    the stream (its fields were never kept) and the connection goes on.
    """


def huffman_decode(data: bytes) -> bytes:
    """The bytes a Huffman-coded string stands for (RFC 7541 §5.2). Raises `HpackError`."""
    out = bytearray()
    acc = bits = 0
    table = _HUFFMAN_DECODE
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            symbol = None
            for length in _LENGTHS:
                if length > bits:
                    break
                symbol = table.get((length, acc >> (bits - length)))
                if symbol is not None:
                    bits -= length
                    acc &= (1 << bits) - 1
                    break
            if symbol is None:
                if bits >= 30:
                    raise HpackError("invalid Huffman code")
                break
            if symbol == _EOS:
                raise HpackError("EOS inside a Huffman-coded string")
            out.append(symbol)
    if bits > 7 or acc != (1 << bits) - 1:
        raise HpackError("Huffman-coded string not padded with the EOS prefix")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """`data` Huffman-coded (used by the tests; the encoder writes strings as they are)."""
    acc = bits = 0
    for byte in data:
        code, length = HUFFMAN_CODES[byte]
        acc = (acc << length) | code
        bits += length
    pad = -bits % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return acc.to_bytes((bits + pad) // 8, "big")


def _integer(data: bytes, at: int, prefix: int) -> tuple[int, int]:
    """An integer with an N-bit prefix at `at` (RFC 7541 §5.1): (value, offset after it)."""
    mask = (1 << prefix) - 1
    value = data[at] & mask
    at += 1
    if value < mask:
        return value, at
    shift = 0
    while True:
        if at >= len(data) or shift > 28:
            raise HpackError("integer truncated or too large")
        byte = data[at]
        at += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def encode_integer(value: int, prefix: int, flags: int) -> bytes:
    """`value` with an N-bit prefix, `flags` in the first byte's other bits."""
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([flags | value])
    out = bytearray([flags | mask])
    value -= mask
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: Fields of HTTP/1.1's connection management, which no HTTP/2 message may carry (RFC 9113 §8.2.2).
CONNECTION_FIELDS: Final = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})


def forbidden(name: str, value: str) -> bool:
    """Whether a field breaks RFC 9113 §8.2: an upper-case name, a connection-specific field, TE not trailers."""
    if name in CONNECTION_FIELDS or (name == "te" and value != "trailers"):
        return True
    return not name.islower() and name != name.lower()  # islower() first: no new string for a lower-case name


class _Kept:
    """A block decoded, or a block's first fields, kept by its bytes: valid while the table is as it was then."""

    __slots__ = ("fields", "generation", "malformed", "raw", "size")

    def __init__(self, raw: bytes, fields: list[object], *, size: int, malformed: bool, generation: int) -> None:
        self.raw = raw
        self.fields = fields
        #: The header list's size (RFC 9113 §6.5.2), and whether a field of it is `forbidden`.
        self.size = size
        self.malformed = malformed
        self.generation = generation


class Decoder:
    """One connection's header-block decoder (its dynamic table lives as long as the connection).

    Besides the strings, it keeps two kinds of blocks that decode the same while the dynamic table stays
    as it is (`generation`): whole blocks that did not change the table (`_blocks`: a peer's fixed head
    and trailers), and the first fields that a peer's blocks share, those that end in per-call values (a
    request's head before its unit id and deadline: `_prefix`, learned from two blocks in a row that did
    not start with the one kept). A block that starts with the kept prefix decodes only the rest.
    """

    __slots__ = (
        "_blocks",
        "_last",
        "_names",
        "_prefix",
        "_strings",
        "generation",
        "limit",
        "malformed",
        "max_list_size",
        "max_size",
        "size",
        "table",
    )

    def __init__(self, max_size: int = DEFAULT_TABLE_SIZE, max_list_size: int = MAX_LIST_SIZE) -> None:
        #: The most our settings allow; the encoder may choose less with a size update (`limit`).
        self.max_size = self.limit = max_size
        #: The largest header list `decode` returns (`HeaderListTooLarge` beyond it).
        self.max_list_size = max_list_size
        #: Newest first: dynamic index 62 is table[0]. Fields are kept as the tuples they were decoded to, and
        #: handed out as they are (compiled, a field taken out as a pair of strings is a new tuple when kept).
        self.table: deque[object] = deque()
        self.size = 0
        #: Huffman-coded strings decoded, and names written as they are, by their bytes (kept apart: the same
        #: bytes mean one thing Huffman-coded and another not).
        self._strings: dict[bytes, str] = {}
        self._names: dict[bytes, str] = {}
        #: Bumped whenever the dynamic table changes: a kept block's list is valid in its generation only.
        self.generation = 0
        self._blocks: dict[bytes, _Kept] = {}
        self._prefix: _Kept | None = None
        #: The last block decoded whole (not from `_prefix`), to learn the prefix from.
        self._last = b""
        #: Whether the last header list decoded has a field that RFC 9113 §8.2 forbids (`forbidden`).
        self.malformed = False

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The header list of one whole block (HEADERS and its CONTINUATIONs). Raises `HpackError`, or
        `HeaderListTooLarge` after decoding the whole block (the table stays in step)."""
        kept = self._blocks.get(block)
        if kept is not None and kept.generation == self.generation:
            self.malformed = kept.malformed
            return cast(list[tuple[str, str]], list(kept.fields))
        prefix = self._prefix
        if prefix is not None and prefix.generation == self.generation and block.startswith(prefix.raw):
            out = list(prefix.fields)
            self.malformed = prefix.malformed
            self._decode(block, len(prefix.raw), out, self.max_list_size - prefix.size, None)
            return cast(list[tuple[str, str]], out)
        out = []
        self.malformed = False
        generation = self.generation
        ends: list[int] = []
        size = self._decode(block, 0, out, self.max_list_size, ends)
        if self.generation == generation and len(block) <= _CACHE_STRING:  # a pure function of the table
            if len(self._blocks) >= _BLOCK_LIMIT:
                self._blocks.clear()
            self._blocks[block] = _Kept(block, list(out), size=size, malformed=self.malformed, generation=generation)
        self._learn(block, out, ends, generation)
        return cast(list[tuple[str, str]], out)

    def _decode(self, block: bytes, at: int, out: list[object], budget: int, ends: list[int] | None) -> int:
        """The fields of `block` from `at` appended to `out`, and `ends` their ends until the first that changed
        the table; the header list's size (`budget` less what is left of it). Notes `malformed`."""
        end = len(block)
        fields = len(out)  # a prefix's fields came before: no size update after them
        static = _STATIC_BOXED
        limit = budget
        try:
            while at < end:
                byte = block[at]
                if 0x80 < byte < 0x80 + 62:  # indexed field of the static table, its index in this byte
                    field = static[byte - 0x81]
                    at += 1
                elif 0x80 + 62 <= byte < 0xFF and byte - 0x80 - 62 < len(self.table):  # of the dynamic table
                    field = self.table[byte - 0x80 - 62]
                    at += 1
                elif byte & 0x80:  # indexed field
                    index, at = _integer(block, at, 7)
                    field = self._field(index)
                elif byte & 0x40:  # literal with incremental indexing
                    field, at = self._literal(block, at, 6)
                    self._add(field)
                    ends = None
                elif byte & 0x20:  # dynamic table size update
                    self.generation += 1
                    ends = None
                    if fields:
                        raise HpackError("a table size update after a field, not at the start of the block")
                    size, at = _integer(block, at, 5)
                    if size > self.max_size:
                        raise HpackError(f"table size update to {size} beyond the {self.max_size} allowed")
                    self.limit = size
                    self._evict(size)
                    continue
                else:  # literal without indexing (0x00) or never indexed (0x10)
                    field, at = self._literal(block, at, 4)
                fields += 1
                name, value = cast(tuple[str, str], field)
                budget -= len(name) + len(value) + 32
                if budget >= 0:  # beyond it, decoded for the table's sake only: nothing is kept
                    out.append(field)
                    if ends is not None:
                        ends.append(at)
                    if forbidden(name, value):
                        self.malformed = True
        except IndexError:
            raise HpackError("header block truncated") from None
        if budget < 0:
            raise HeaderListTooLarge(f"a header list beyond {self.max_list_size} bytes")
        return limit - budget

    def _learn(self, block: bytes, out: list[object], ends: list[int], generation: int) -> None:
        """Keep as `_prefix` the fields `block` shares with the block decoded whole before it (whole fields,
        none that changed the table, at most `_PREFIX_LIMIT` bytes of block)."""
        last, self._last = self._last, block[:_PREFIX_LIMIT]
        common = 0
        most = min(len(last), len(block))
        while common < most and block[common] == last[common]:
            common += 1
        count = 0
        while count < len(ends) and ends[count] <= common:
            count += 1
        if not count:
            self._prefix = None
            return
        fields = out[:count]
        size = malformed = 0
        for field in fields:
            name, value = cast(tuple[str, str], field)
            size += len(name) + len(value) + 32
            malformed |= forbidden(name, value)
        raw = block[: ends[count - 1]]
        self._prefix = _Kept(raw, fields, size=size, malformed=bool(malformed), generation=generation)

    def _field(self, index: int) -> object:
        if 0 < index <= 61:
            return _STATIC_BOXED[index - 1]
        try:
            if index == 0:
                raise IndexError
            return self.table[index - 62]
        except IndexError:
            raise HpackError(f"no header table entry {index}") from None

    def _literal(self, block: bytes, at: int, prefix: int) -> tuple[object, int]:
        index, at = _integer(block, at, prefix)
        if index:
            name = cast(tuple[str, str], self._field(index))[0]
        else:
            name, at = self._string(block, at, keep=True)
        value, at = self._string(block, at, keep=False)
        return (name, value), at

    def _string(self, block: bytes, at: int, *, keep: bool) -> tuple[str, int]:
        """A string at `at`; one Huffman-coded, or (`keep`: a name) short, is decoded once and kept."""
        huffman = block[at] & 0x80
        length, at = _integer(block, at, 7)
        end = at + length
        if end > len(block):
            raise HpackError("string truncated")
        raw = block[at:end]
        if not huffman and not keep:
            return raw.decode("latin-1"), end
        strings = self._strings if huffman else self._names
        text = strings.get(raw)
        if text is None:
            text = huffman_decode(raw).decode("latin-1") if huffman else raw.decode("latin-1")
            if length > _CACHE_STRING:
                return text, end
            if len(strings) >= _CACHE_LIMIT:
                strings.clear()
            strings[raw] = text
        return text, end

    def _add(self, field: object) -> None:
        self.generation += 1
        name, value = cast(tuple[str, str], field)
        size = len(name) + len(value) + 32
        if size > self.limit:  # RFC 7541 §4.4: the table is emptied, the entry not added
            self._evict(0)
            return
        self._evict(self.limit - size)
        self.table.appendleft(field)
        self.size += size

    def _evict(self, limit: int) -> None:
        while self.size > limit and self.table:
            name, value = cast(tuple[str, str], self.table.pop())
            self.size -= len(name) + len(value) + 32


class Encoder:
    """Header lists to blocks, without indexing (see the module docstring).

    Each field's representation is kept as it was written (most repeat from call to call),
    but not for a name that has shown `_VOLATILE` distinct values: its values change per
    call (a request id, a deadline, a unit id), so keeping them would only fill the cache and
    empty it, common fields and all, every thousand calls. Such a name's head is kept instead.
    The kept representations are found by name, then value (compiled, a field looked up by
    the pair would be a new tuple per field).
    """

    __slots__ = ("_changing", "_fields", "_heads", "_kept", "_values")

    def __init__(self) -> None:
        #: Each field's representation as it was written last, by name then value (`_kept` of them in all).
        self._fields: dict[str, dict[str, bytes]] = {}
        self._kept = 0
        #: How many values of each name `_fields` took; a name's head (its index or literal) once it stopped,
        #: and the volatile names' heads (their values no longer looked up: written as they come).
        self._values: dict[str, int] = {}
        self._heads: dict[str, bytes] = {}
        self._changing: dict[str, bytes] = {}

    def encode(self, headers: list[tuple[str, str]]) -> bytes:
        out: list[bytes] = []
        fields = self._fields
        changing = self._changing
        for name, value in headers:
            values = fields.get(name)
            if values is not None:
                raw = values.get(value)
                if raw is not None:
                    out.append(raw)
                    continue
            head = changing.get(name)
            if head is None:
                self._field(out, name, value)
                continue
            encoded = value.encode("latin-1")  # appended in pieces: no bytes made to hold them together
            size = len(encoded)
            out.append(head)
            out.append(_SHORT_LENGTHS[size] if size < 127 else encode_integer(size, 7, 0))
            out.append(encoded)
        return b"".join(out)

    def _field(self, out: list[bytes], name: str, value: str) -> None:
        """A field whole from the static table, else a literal (the name by its static index if it has one),
        appended to `out` and kept unless its name is volatile."""
        index = _STATIC_FIELDS.get(name, _NO_VALUES).get(value, 0)
        if index:
            raw = encode_integer(index, 7, 0x80)
        else:
            head = self._heads.get(name)
            if head is None:
                head = _name_head(name)
                if len(self._heads) < _CACHE_LIMIT and len(head) <= _CACHE_STRING:
                    self._heads[name] = head
            encoded = value.encode("latin-1")
            raw = head + encode_integer(len(encoded), 7, 0) + encoded
            seen = self._values.get(name, 0)
            if seen >= _VOLATILE:  # from now on its values are written as they come, not looked up
                if len(self._changing) < _CACHE_LIMIT and len(head) <= _CACHE_STRING:
                    self._changing[name] = head
                    self._kept -= len(self._fields.pop(name, _NO_FIELDS))
                out.append(raw)
                return
            self._values[name] = seen + 1
        out.append(raw)
        if len(raw) > _CACHE_STRING:  # long ones rarely repeat, and kept they would hold MBs
            return
        if self._kept >= _CACHE_LIMIT:
            self._fields.clear()
            self._values.clear()
            self._changing.clear()
            self._kept = 0
        values = self._fields.get(name)
        if values is None:
            values = self._fields[name] = {}
        values[value] = raw
        self._kept += 1


#: One-byte string lengths (an HPACK integer with a 7-bit prefix, no Huffman flag), made once.
_SHORT_LENGTHS: Final = [bytes((n,)) for n in range(127)]
_NO_VALUES: Final[dict[str, int]] = {}
_NO_FIELDS: Final[dict[str, bytes]] = {}


def _name_head(name: str) -> bytes:
    """A literal field's start, without indexing (RFC 7541 §6.2.2): the name by its static index, else written out."""
    index = _STATIC_NAMES.get(name)
    if index is not None:
        return encode_integer(index, 4, 0)
    encoded = name.encode("latin-1")
    return b"\x00" + encode_integer(len(encoded), 7, 0) + encoded
