"""Our answer to an HTTP/2 client (h2c with prior knowledge, gRPC) on the HTTP/1.1 port.

Pure: the client's bytes in, ours out. Why not only a GOAWAY with HTTP_1_1_REQUIRED
(measured with grpcio 1.85): after SETTINGS and that GOAWAY, a gRPC client retries
the call on new connections until its deadline (a stream the server never saw is safe
to retry), so a call without a deadline hangs; after a stream the server answered, a
GOAWAY carrying that code aborts the client's process. So the first request is
answered, in both vocabularies at once: HTTP status 505 (HTTP Version Not Supported)
with gRPC's trailers-only ``grpc-status: 14`` (UNAVAILABLE) and our reason as
``grpc-message``, which gRPC clients report as it stands. A GOAWAY (NO_ERROR, the
reason in its debug data) then ends the connection.
"""

from __future__ import annotations

#: An HTTP/2 client's first bytes (RFC 9113 §3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REASON = b"abrouter: this port speaks HTTP/1.1 only; gRPC goes to the port of serve --grpc-port"
#: Our server preface: an empty SETTINGS frame.
SERVER_PREFACE = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
#: Bytes we read while waiting for a request before we give up on the client.
MAX_BUFFER = 64 * 1024

_HEADERS, _GOAWAY = 0x1, 0x7
_END_STREAM_AND_HEADERS = 0x5
_NO_ERROR, _PROTOCOL_ERROR = 0, 1


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal field without indexing, new name, no Huffman (RFC 7541 §6.2.2)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


_ANSWER_BLOCK = (
    b"\x08\x03505"  # :status (static index 8), literal value
    + _literal(b"content-type", b"application/grpc")
    + _literal(b"grpc-status", b"14")
    + _literal(b"grpc-message", REASON)
)


def goaway(last_stream: int, code: int) -> bytes:
    return _frame(_GOAWAY, 0, 0, last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + REASON)


class Refusal:
    """One HTTP/2 connection: `feed` it what the client sends until it returns our last bytes."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> bytes | None:
        """What to send before closing, once the client's first request (or nonsense) arrived; None: read on."""
        self.buffer += data
        if len(self.buffer) < len(PREFACE):
            return goaway(0, _PROTOCOL_ERROR) if not PREFACE.startswith(self.buffer) else None
        if not self.buffer.startswith(PREFACE):
            return goaway(0, _PROTOCOL_ERROR)
        at = len(PREFACE)
        while len(self.buffer) >= at + 9:
            length, kind = int.from_bytes(self.buffer[at : at + 3], "big"), self.buffer[at + 3]
            stream = int.from_bytes(self.buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF
            if kind == _HEADERS and stream:
                answer = _frame(_HEADERS, _END_STREAM_AND_HEADERS, stream, _ANSWER_BLOCK)
                return answer + goaway(stream, _NO_ERROR)
            at += 9 + length
        return goaway(0, _PROTOCOL_ERROR) if len(self.buffer) > MAX_BUFFER else None
