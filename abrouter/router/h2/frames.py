"""HTTP/2 frames (RFC 9113 §4, §6): their types, flags, headers and the few payloads we build or
read. Pure: bytes in, bytes out.

A frame is a 9-byte header (24-bit length, type, flags, 31-bit stream id) and its payload.
The connection (`abrouter.router.h2.connection`) cuts its input into frames (their heads
read byte by byte) and dispatches on the type; the builders here write whole frames, or
a frame's head (`head`) to write beside its payload.
"""

from __future__ import annotations

import struct
from typing import Final

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# SETTINGS identifiers (§6.5.2)
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6

# Error codes (§7)
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

#: What a client sends first (§3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The frame size every peer accepts until it says more (§4.2), and the most it may say.
DEFAULT_MAX_FRAME: Final = 16_384
MAX_FRAME_LIMIT: Final = 16_777_215
#: The flow-control window every stream and connection starts with (§6.9.2), and the most it may be.
DEFAULT_WINDOW: Final = 65_535
MAX_WINDOW: Final = 2**31 - 1

#: A frame header: length (16 high bits, 8 low bits), type, flags, stream id (with its reserved bit).
HEAD: Final = struct.Struct(">HBBBL")
_SETTING: Final = struct.Struct(">HL")
_U32: Final = struct.Struct(">L")
_TWO_U32: Final = struct.Struct(">LL")


class FrameError(Exception):
    """A frame that breaks the protocol: a connection error with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def head(kind: int, flags: int, stream_id: int, size: int) -> bytes:
    """A frame's 9-byte header (compiled, `int.to_bytes` of one int: no struct call with five boxed ints)."""
    if size < 1 << 14:  # the whole header in one 62-bit (unboxed) int
        return (size << 48 | kind << 40 | flags << 32 | stream_id).to_bytes(9, "big")
    return size.to_bytes(3, "big") + (kind << 40 | flags << 32 | stream_id).to_bytes(6, "big")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return head(kind, flags, stream_id, len(payload)) + payload


def data(stream_id: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, stream_id, payload)


def headers(stream_id: int, block: bytes, *, end_stream: bool, max_frame: int) -> bytes:
    """A HEADERS frame, and CONTINUATION frames when the block is longer than `max_frame`."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return frame(HEADERS, flags | END_HEADERS, stream_id, block)
    pieces = [block[at : at + max_frame] for at in range(0, len(block), max_frame)]
    out = [frame(HEADERS, flags, stream_id, pieces[0])]
    out += [frame(CONTINUATION, 0, stream_id, piece) for piece in pieces[1:-1]]
    out.append(frame(CONTINUATION, END_HEADERS, stream_id, pieces[-1]))
    return b"".join(out)


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(key, value) for key, value in values.items()))


SETTINGS_ACK: Final = frame(SETTINGS, ACK, 0)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise FrameError(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6 bytes")
    return [_SETTING.unpack_from(payload, at) for at in range(0, len(payload), 6)]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def parse_window_update(payload: bytes) -> int:
    if len(payload) != 4:
        raise FrameError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload not 4 bytes")
    return int(_U32.unpack(payload)[0]) & MAX_WINDOW


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def parse_code(payload: bytes) -> int:
    """The error code of a RST_STREAM."""
    if len(payload) != 4:
        raise FrameError(FRAME_SIZE_ERROR, "RST_STREAM payload not 4 bytes")
    return int(_U32.unpack(payload)[0])


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _TWO_U32.pack(last_stream_id, code) + debug)


def parse_goaway(payload: bytes) -> tuple[int, int]:
    """(last stream id, error code)."""
    if len(payload) < 8:
        raise FrameError(FRAME_SIZE_ERROR, "GOAWAY payload shorter than 8 bytes")
    last, code = _TWO_U32.unpack_from(payload)
    return last & MAX_WINDOW, code


def ping_ack(payload: bytes) -> bytes:
    return frame(PING, ACK, 0, payload)


def unpad(payload: bytes, flags: int) -> bytes:
    """A DATA or HEADERS payload without its padding (§6.1)."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise FrameError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


def header_block(payload: bytes, flags: int) -> bytes:
    """The header block fragment of a HEADERS payload: padding and priority removed (§6.2)."""
    payload = unpad(payload, flags)
    if flags & PRIORITY_FLAG:
        if len(payload) < 5:
            raise FrameError(FRAME_SIZE_ERROR, "HEADERS with priority shorter than 5 bytes")
        return payload[5:]
    return payload
