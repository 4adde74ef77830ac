"""Self-describing request ids, so that crediting an outcome needs no lookup.

An id carries what an outcome needs: the unit hash, the variant index, the epoch and the
time it was issued, plus random bits and a MAC. Any replica can verify and decode an id
that any other replica issued, without Redis and without storing one key per request
(at 10k req/s that would be 864 million keys a day). The MAC turns typos, truncation and
made-up ids into "unknown request id"; with a secret shared by the replicas
(``ABROUTER_SECRET``) it also stops clients from forging credit for a variant.

Layout (31 bytes, base64url without padding = 42 characters)::

    unit hash 8 | epoch u32 | variant u8 | issued-at u32 seconds | random 6 | mac 8

The random part's top bit says the request had no unit id (it was its own unit), so an
outcome for it is recorded with n_u = 1 whichever batch its exposure landed in
(`abrouter.router.eventlog.events.Outcome.anonymous`); 47 random bits still make ids unique.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import random
import struct
from dataclasses import dataclass
from typing import Final

from abrouter.router.errors import RequestIdError

_BODY: Final = struct.Struct(">8sIBI6s")
#: `_BODY` with its 6 random bytes packed as two big-endian ints (2 and 4 bytes): the same bytes, no bytes object
#: made for them.
_PACKED: Final = struct.Struct(">8sIBIHI")
_MAC_LEN: Final = 8
_ANONYMOUS: Final = 0x80  # the top bit of the random part's first byte
_ENCODED_LEN: Final = 42
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    unit_hash: str
    epoch: int
    variant_index: int
    issued_at: int
    #: The request had no unit id: it was its own unit.
    anonymous: bool = False


class RequestIds:
    def __init__(self, secret: bytes) -> None:
        self._secret = hashlib.blake2b(secret, digest_size=32, person=b"abrouter-rid").digest()
        # Keyed once: each MAC copies this state (~40% less than keying a new hash per id).
        self._keyed = hashlib.blake2b(digest_size=_MAC_LEN, key=self._secret)
        # The random part only makes ids unique; the MAC is what protects them. A seeded
        # PRNG costs a fraction of os.urandom's system call on every request.
        self._rng = random.Random(os.urandom(16))

    def issue(self, *, unit_hash: str, epoch: int, variant_index: int, now: float, anonymous: bool = False) -> str:
        bits = self._rng.getrandbits(47) | (_ANONYMOUS << 40 if anonymous else 0)
        body = _PACKED.pack(bytes.fromhex(unit_hash), epoch, variant_index, int(now), bits >> 32, bits & 0xFFFFFFFF)
        # base64url without padding (the 42 characters before "=="), binascii's C call without base64's two Python
        # frames; the padding dropped by the translation itself.
        return binascii.b2a_base64(body + self._mac(body), newline=False).translate(_URLSAFE, b"=").decode()

    def decode(self, request_id: str, *, now: float, ttl_s: float) -> RequestInfo:
        if not isinstance(request_id, str) or len(request_id) != _ENCODED_LEN:
            raise RequestIdError("unknown request id (malformed)")
        try:
            raw = base64.urlsafe_b64decode(request_id + "==")
        except (binascii.Error, ValueError):
            raise RequestIdError("unknown request id (malformed)") from None
        body, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise RequestIdError("unknown request id (not issued by this experiment)")
        unit, epoch, variant, issued, nonce = _BODY.unpack(body)
        if now - issued > ttl_s:
            raise RequestIdError(f"request id expired ({now - issued:.0f}s old, outcome_ttl is {ttl_s:.0f}s)")
        anonymous = bool(nonce[0] & _ANONYMOUS)
        return RequestInfo(
            unit_hash=unit.hex(), epoch=epoch, variant_index=variant, issued_at=issued, anonymous=anonymous
        )

    def _mac(self, body: bytes) -> bytes:
        # Keyed BLAKE2b is a MAC by design: a third of hmac.new's cost.
        mac = self._keyed.copy()
        mac.update(body)
        return mac.digest()
