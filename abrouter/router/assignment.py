"""Variant assignment: a pure, deterministic function of (salt, unit id, weights).

Every replica computes the same answer without talking to the others, and a unit keeps
its variant across requests, processes and restarts.

We use weighted rendezvous hashing for any number of variants: each variant ``i`` gets
a score ``-w_i / ln(u_i)``, with ``u_i`` a hash of (salt, unit, variant name) mapped
into (0, 1), and the highest score wins. ``-ln(u_i)/w_i`` is exponential with rate
``w_i``, so the winner is variant ``i`` with probability exactly ``w_i / Σw``: unbiased,
unlike Iter8's ``w·hash`` scoring (90/10 came out as 94/6). Raising one weight raises
only that variant's score, so a ramp moves units only *into* the variant whose weight
rose, and two variants whose weights did not change never exchange units. Cumulative
ranges on one hash bucket would move units between unchanged arms once there are three.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # annotations only: mypyc compiles `i64` to a machine word; at run time nothing is imported
    from mypy_extensions import i64

_MASK64 = (1 << 64) - 1
_TWO_POW_53 = float(1 << 53)
# `Assigner.assign` mixes in signed 64-bit ints (`i64`: machine words once compiled, no big-int objects; pure
# Python, plain ints): splitmix64's multipliers as signed, and masks that make an arithmetic shift logical.
_M1: Final[i64] = -4658895280553007687  # 0xBF58476D1CE4E5B9 - 2**64
_M2: Final[i64] = -7723592293110705685  # 0x94D049BB133111EB - 2**64
_LOW63: Final[i64] = 0x7FFFFFFFFFFFFFFF
_MIN64: Final[i64] = -0x8000000000000000


def _signed64(v: i64) -> i64:
    """`v` mod 2**64 as a signed 64-bit int: compiled, a product already wrapped so (a no-op); pure Python, a big
    product cut to its low 64 bits."""
    return (v & _LOW63) + ((v >> 63) & 1) * _MIN64


def _unit_interval(h: i64, seed: i64) -> float:
    """``((_mix64(h ^ seed) >> 11) + 0.5) / 2**53`` on the signed forms of `h` and `seed`: in (0, 1), never 0 or 1."""
    x = h ^ seed
    x = _signed64((x ^ ((x >> 30) & 0x3FFFFFFFF)) * _M1)
    x = _signed64((x ^ ((x >> 27) & 0x1FFFFFFFFF)) * _M2)
    x = x ^ ((x >> 31) & 0x1FFFFFFFF)
    return (float((x >> 11) & 0x1FFFFFFFFFFFFF) + 0.5) / _TWO_POW_53


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-distributed bijection on 64-bit ints."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


def _hash64(data: bytes, key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=key[:64]).digest(), "little")


@dataclass(frozen=True)
class Assigner:
    """Assignment for one salt, variant list and weights (one weights epoch).

    Build a new one when the weights change; it is cheap and immutable, so the request
    path reads one attribute and never sees a half-updated table.
    """

    salt: str
    names: tuple[str, ...]
    weights: tuple[float, ...]
    # Derived in __post_init__ (declared, so that the compiled build has room for them).
    _key: bytes = field(init=False, repr=False, compare=False, default=b"")
    _seeds: tuple[int, ...] = field(init=False, repr=False, compare=False, default=())
    #: The arms that can win: (index, seed as a signed 64-bit int, weight) of each variant of weight > 0.
    _arms: tuple[tuple[int, int, float], ...] = field(init=False, repr=False, compare=False, default=())
    #: BLAKE2b keyed with `_key`, never updated: each unit's hash copies it (cheaper than keying a new one).
    _keyed: hashlib.blake2b | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.weights) or not self.names:
            raise ValueError("names and weights must be non-empty and of equal length")
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all zero, got {self.weights}")
        key = hashlib.blake2b(self.salt.encode(), digest_size=32).digest()
        seeds = tuple(_hash64(name.encode(), key) for name in self.names)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_seeds", seeds)
        signed = tuple(seed - (1 << 64) if seed >> 63 else seed for seed in seeds)
        arms = tuple((i, seed, weight) for i, (seed, weight) in enumerate(zip(signed, self.weights)) if weight > 0)
        object.__setattr__(self, "_arms", arms)
        object.__setattr__(self, "_keyed", hashlib.blake2b(digest_size=8, key=key[:64]))

    def assign(self, unit: str) -> int:
        """Index of the variant for this unit id."""
        keyed = self._keyed
        assert keyed is not None  # set in __post_init__
        hasher = keyed.copy()  # _hash64(unit, self._key), the key set once
        hasher.update(unit.encode("utf-8", "surrogatepass"))
        h: i64 = int.from_bytes(hasher.digest(), "little", signed=True)
        best, best_score = 0, -1.0
        for i, seed, weight in self._arms:
            score = -weight / math.log(_unit_interval(h, seed))  # math.log itself: compiled, a C call
            if score > best_score:
                best, best_score = i, score
        return best

    def assign_random(self, rng: random.Random) -> int:
        """For requests without a unit id: an independent draw per request."""
        return rng.choices(range(len(self.weights)), weights=self.weights)[0]
