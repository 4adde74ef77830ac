"""The model name of an Open Inference Protocol (v2) gRPC inference request, read and rewritten
in its raw bytes. Pure: a minimal protobuf wire-format reader, no generated code.

`ModelInferRequest` (``inference.GRPCInferenceService/ModelInfer``, also the message of
Triton's ``ModelStreamInfer``) has ``string model_name = 1`` (grpc_predict_v2.proto). The
gateway's per-arm rewrite (issue 16) matches and rewrites it as the HTTP path's model
name: `model_name` reads it, `with_model_name` writes it. A scan skips every other field by
its length, so a request with megabytes of ``raw_input_contents`` costs a few field
headers to read. A message that is not valid protobuf reads as having no name.
"""

from __future__ import annotations

#: The OIP v2 method whose every request message is a ModelInferRequest (Triton's streaming inference).
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
#: The OIP v2 methods whose request is a ModelInferRequest.
INFER_METHODS = frozenset(
    {"/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelStreamInfer"}
)

_MODEL_NAME = 1
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Malformed(Exception):
    pass


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """A base-128 varint at `at`: (value, the offset after it)."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _Malformed
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_at(data: bytes, at: int) -> tuple[int, int, int, int]:
    """The field whose tag starts at `at`: (number, start of its tag, of its payload, its end). Raises `_Malformed`."""
    start = at
    key, at = _varint(data, at)
    number, kind = key >> 3, key & 7
    if kind == _VARINT:
        _, end = _varint(data, at)
    elif kind == _I64:
        end = at + 8
    elif kind == _I32:
        end = at + 4
    elif kind == _LEN:
        size, at = _varint(data, at)
        end = at + size
    else:  # groups (deprecated) and invalid wire types: not an OIP message
        raise _Malformed
    if number == 0 or end > len(data):
        raise _Malformed
    return number, start, at, end


def _fields(data: bytes) -> list[tuple[int, int, int, int]]:
    """Every top-level field: (number, start of its tag, start of its payload, end). Raises `_Malformed`."""
    out = []
    at = 0
    while at < len(data):
        field = _field_at(data, at)
        out.append(field)
        at = field[3]
    return out


def _first_name(prefix: bytes) -> tuple[int, int, int] | None:
    """Where the first `model_name` of a message's first bytes is, if it is whole among them (serialisers write
    fields in number order: it comes first); None if a field cut short or broken comes before it."""
    at = 0
    while at < len(prefix):
        try:
            number, start, payload, end = _field_at(prefix, at)
        except _Malformed:
            return None
        if number == _MODEL_NAME:
            return start, payload, end
        at = end
    return None


def name_in_prefix(prefix: bytes) -> str | None:
    """The `model_name` of a message of which only the first bytes are at hand (a large tensor arriving), or None."""
    found = _first_name(prefix)
    if found is None:
        return None
    _, at, end = found
    try:
        return prefix[at:end].decode("utf-8")
    except UnicodeDecodeError:
        return None


def renamed_prefix(prefix: bytes, name: str) -> bytes | None:
    """A message's first bytes with its (first) `model_name` replaced by `name`; None if it is not among them."""
    found = _first_name(prefix)
    if found is None:
        return None
    start, _, end = found
    encoded = name.encode("utf-8")
    return prefix[:start] + b"\x0a" + _encode_varint(len(encoded)) + encoded + prefix[end:]


def model_name(message: bytes) -> str | None:
    """The request's `model_name` (the last one, as protobuf's parsers take it), or None."""
    try:
        found = [(at, end) for number, _, at, end in _fields(message) if number == _MODEL_NAME]
    except _Malformed:
        return None
    if not found:
        return None
    at, end = found[-1]
    try:
        return message[at:end].decode("utf-8")
    except UnicodeDecodeError:
        return None


def with_model_name(message: bytes, name: str) -> bytes:
    """The request with its `model_name` replaced by `name` (every other field as it was).

    Raises ValueError for a message that is not valid protobuf.
    """
    try:
        fields = _fields(message)
    except _Malformed:
        raise ValueError("not a protobuf message") from None
    encoded = name.encode("utf-8")
    parts = [b"\x0a", _encode_varint(len(encoded)), encoded]  # field 1, length-delimited
    kept = 0
    for number, start, _, end in fields:
        if number == _MODEL_NAME:
            parts.append(message[kept:start])
            kept = end
    parts.append(message[kept:])
    return b"".join(parts)


def renamed(message: bytes, old: str, new: str) -> bytes:
    """`message` with its `model_name` `new` where it is `old` (a later message of a renamed stream); else as it is."""
    return with_model_name(message, new) if model_name(message) == old else message


def message_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole gRPC length-prefixed messages at the start of `data` as (compressed flag, message), and the rest."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while len(data) - at >= 5:
        end = at + 5 + int.from_bytes(data[at + 1 : at + 5], "big")
        if end > len(data):
            break
        out.append((data[at], data[at + 5 : end]))
        at = end
    return out, data[at:]


def framed(flag: int, message: bytes) -> bytes:
    """A gRPC length-prefixed message."""
    return bytes([flag]) + len(message).to_bytes(4, "big") + message
