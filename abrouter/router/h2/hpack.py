"""HPACK (RFC 7541): the header compression of HTTP/2. Pure: bytes in, header lists out.

`Decoder` reads header blocks: indexed fields, literals with and without indexing, the
dynamic table (its size bounded by our SETTINGS_HEADER_TABLE_SIZE, 4096) and its size
updates, and Huffman-coded strings. Most strings repeat from call to call (a user agent,
``application/grpc``, a method path), so each decoder keeps the strings it decoded by
their raw bytes and decodes each one once. Whole blocks repeat too (an upstream's
``:status 200`` head and ``grpc-status 0`` trailers, once indexed, are the same few bytes
on every call): a block of indexed fields only decodes to a pure function of its bytes and
the dynamic table, so each decoder keeps a few such blocks' header lists by their bytes,
valid while the table has not changed since (`Decoder.generation`). Blocks with literals
are not kept: theirs are the values that change from call to call (a unit id, a deadline).

`Encoder` is cheap on purpose: it never indexes (no dynamic table, so nothing to evict
and no size update to send), uses the static table for whole fields and for names, and
writes values as they are (no Huffman): on loopback and in a data centre the bytes
cost less than the CPU to squeeze them. Names and values are ``str`` decoded as
latin-1 both ways, so any byte passes unchanged (``-bin`` values are base64 anyway).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final

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
_STATIC_FIELDS: Final = {field: index for index, field in reversed(list(enumerate(STATIC_TABLE, 1)))}
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


class Decoder:
    """One connection's header-block decoder (its dynamic table lives as long as the connection)."""

    __slots__ = ("_blocks", "_strings", "generation", "limit", "max_list_size", "max_size", "size", "table")

    def __init__(self, max_size: int = DEFAULT_TABLE_SIZE, max_list_size: int = MAX_LIST_SIZE) -> None:
        #: The most our settings allow; the encoder may choose less with a size update (`limit`).
        self.max_size = self.limit = max_size
        #: The largest header list `decode` returns (`HeaderListTooLarge` beyond it).
        self.max_list_size = max_list_size
        self.table: deque[tuple[str, str]] = deque()  # newest first: dynamic index 62 is table[0]
        self.size = 0
        self._strings: dict[bytes, str] = {}
        #: Bumped whenever the dynamic table changes: a kept block's list is valid in its generation only.
        self.generation = 0
        #: Blocks of indexed fields only, by their bytes: (the generation decoded in, the header list).
        self._blocks: dict[bytes, tuple[int, list[tuple[str, str]]]] = {}

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The header list of one whole block (HEADERS and its CONTINUATIONs). Raises `HpackError`, or
        `HeaderListTooLarge` after decoding the whole block (the table stays in step)."""
        kept = self._blocks.get(block)
        if kept is not None and kept[0] == self.generation:
            return list(kept[1])
        out: list[tuple[str, str]] = []
        at, end = 0, len(block)
        budget = self.max_list_size
        fields = 0
        indexed_only = True
        static = STATIC_TABLE
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
                    indexed_only = False
                elif byte & 0x20:  # dynamic table size update
                    self.generation += 1
                    indexed_only = False
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
                    indexed_only = False
                fields += 1
                budget -= len(field[0]) + len(field[1]) + 32
                if budget >= 0:  # beyond it, decoded for the table's sake only: nothing is kept
                    out.append(field)
        except IndexError:
            raise HpackError("header block truncated") from None
        if budget < 0:
            raise HeaderListTooLarge(f"a header list beyond {self.max_list_size} bytes")
        if indexed_only and end <= _CACHE_STRING:  # a pure function of the table, which it did not change
            if len(self._blocks) >= _BLOCK_LIMIT:
                self._blocks.clear()
            self._blocks[block] = (self.generation, list(out))
        return out

    def _field(self, index: int) -> tuple[str, str]:
        if 0 < index <= 61:
            return STATIC_TABLE[index - 1]
        try:
            if index == 0:
                raise IndexError
            return self.table[index - 62]
        except IndexError:
            raise HpackError(f"no header table entry {index}") from None

    def _literal(self, block: bytes, at: int, prefix: int) -> tuple[tuple[str, str], int]:
        index, at = _integer(block, at, prefix)
        if index:
            name = self._field(index)[0]
        else:
            name, at = self._string(block, at)
        value, at = self._string(block, at)
        return (name, value), at

    def _string(self, block: bytes, at: int) -> tuple[str, int]:
        huffman = block[at] & 0x80
        length, at = _integer(block, at, 7)
        end = at + length
        if end > len(block):
            raise HpackError("string truncated")
        raw = block[at:end]
        if not huffman:
            return raw.decode("latin-1"), end
        text = self._strings.get(raw)
        if text is None:
            text = huffman_decode(raw).decode("latin-1")
            if length > _CACHE_STRING:
                return text, end
            if len(self._strings) >= _CACHE_LIMIT:
                self._strings.clear()
            self._strings[raw] = text
        return text, end

    def _add(self, field: tuple[str, str]) -> None:
        self.generation += 1
        size = len(field[0]) + len(field[1]) + 32
        if size > self.limit:  # RFC 7541 §4.4: the table is emptied, the entry not added
            self._evict(0)
            return
        self._evict(self.limit - size)
        self.table.appendleft(field)
        self.size += size

    def _evict(self, limit: int) -> None:
        while self.size > limit and self.table:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + 32


class Encoder:
    """Header lists to blocks, without indexing (see the module docstring).

    Each field's representation is kept as it was written (most repeat from call to call),
    but not for a name that has shown `_VOLATILE` distinct values: its values change per
    call (a request id, a deadline, a unit id), so keeping them would only fill the cache and
    empty it, common fields and all, every thousand calls. Such a name's head is kept instead.
    """

    __slots__ = ("_fields", "_heads", "_values")

    def __init__(self) -> None:
        #: Each field's representation as it was written last.
        self._fields: dict[tuple[str, str], bytes] = {}
        #: How many values of each name `_fields` took; a name's head (its index or literal) once it stopped.
        self._values: dict[str, int] = {}
        self._heads: dict[str, bytes] = {}

    def encode(self, headers: Iterable[tuple[str, str]]) -> bytes:
        fields = self._fields
        return b"".join([fields.get(field) or self._field(field) for field in headers])

    def _field(self, field: tuple[str, str]) -> bytes:
        """A field whole from the static table, else a literal (the name by its static index if it has one)."""
        index = _STATIC_FIELDS.get(field)
        if index is not None:
            raw = encode_integer(index, 7, 0x80)
        else:
            name, value = field
            head = self._heads.get(name)
            if head is None:
                head = _name_head(name)
                if len(self._heads) < _CACHE_LIMIT and len(head) <= _CACHE_STRING:
                    self._heads[name] = head
            encoded = value.encode("latin-1")
            raw = head + encode_integer(len(encoded), 7, 0) + encoded
            seen = self._values.get(name, 0)
            if seen >= _VOLATILE:
                return raw
            self._values[name] = seen + 1
        if len(raw) > _CACHE_STRING:  # long ones rarely repeat, and kept they would hold MBs
            return raw
        if len(self._fields) >= _CACHE_LIMIT:
            self._fields.clear()
            self._values.clear()
        self._fields[field] = raw
        return raw


def _name_head(name: str) -> bytes:
    """A literal field's start, without indexing (RFC 7541 §6.2.2): the name by its static index, else written out."""
    index = _STATIC_NAMES.get(name)
    if index is not None:
        return encode_integer(index, 4, 0)
    encoded = name.encode("latin-1")
    return b"\x00" + encode_integer(len(encoded), 7, 0) + encoded
