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

_MASK64 = (1 << 64) - 1
_TWO_POW_53 = float(1 << 53)


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
    #: The arms that can win: (index, seed, weight) of each variant of weight > 0.
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
        arms = tuple((i, seed, weight) for i, (seed, weight) in enumerate(zip(seeds, self.weights)) if weight > 0)
        object.__setattr__(self, "_arms", arms)
        object.__setattr__(self, "_keyed", hashlib.blake2b(digest_size=8, key=key[:64]))

    def assign(self, unit: str) -> int:
        """Index of the variant for this unit id."""
        keyed = self._keyed
        assert keyed is not None  # set in __post_init__
        hasher = keyed.copy()  # _hash64(unit, self._key), the key set once
        hasher.update(unit.encode("utf-8", "surrogatepass"))
        h = int.from_bytes(hasher.digest(), "little")
        best, best_score = 0, -1.0
        log = math.log
        for i, seed, weight in self._arms:
            x = h ^ seed  # _mix64, inline: it runs once per arm on every request
            x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
            x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
            u = (((x ^ (x >> 31)) >> 11) + 0.5) / _TWO_POW_53  # in (0, 1), never 0 or 1
            score = -weight / log(u)
            if score > best_score:
                best, best_score = i, score
        return best

    def assign_random(self, rng: random.Random) -> int:
        """For requests without a unit id: an independent draw per request."""
        return rng.choices(range(len(self.weights)), weights=self.weights)[0]
