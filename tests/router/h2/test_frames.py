"""A frame's 9-byte head (`frames.head`) as RFC 9113 §4.1 lays it out, checked against `struct`."""

from __future__ import annotations

import struct

import pytest

from abrouter.router.h2 import frames


@pytest.mark.parametrize("size", [0, 1, 100, (1 << 14) - 1, 1 << 14, 16_777_215])
@pytest.mark.parametrize("stream_id", [0, 1, 0x7FFF_FFFF])
def test_a_frames_head_is_its_24_bit_length_type_flags_and_31_bit_stream_id(size: int, stream_id: int) -> None:
    layout = struct.pack(">I", size)[1:] + struct.pack(">BBI", frames.HEADERS, 0x25, stream_id)
    assert frames.head(frames.HEADERS, 0x25, stream_id, size) == layout
    assert frames.frame(frames.DATA, 1, stream_id, b"x" * min(size, 300))[:3] == struct.pack(">I", min(size, 300))[1:]
