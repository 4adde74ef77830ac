"""Argument types for every `abrouter` command: each checks one kind of flag value, once.

Pure. argparse calls them on the flag's text (and on a default read from the
environment), and turns the `argparse.ArgumentTypeError` each raises into one line and
exit code 2: ``abrouter serve: error: argument --idle-timeout: must be a finite number
> 0, got 'inf'``. ``float('nan')`` and ``float('inf')`` parse, so a bare ``type=float``
lets them through; these do not.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from abrouter.contract.keys import MAX_SHARDS
from abrouter.redact import MASK, mask_url

#: The schemes redis-py's ``from_url`` accepts.
REDIS_SCHEMES = ("redis", "rediss", "unix")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive(text: str) -> float:
    """A finite number > 0: a timeout, an interval, a rate."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0: an added delay."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def at_least(low: int) -> Callable[[str], int]:
    """An integer >= `low`: a count."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def shards(text: str) -> int | None:
    """The hash tags one new experiment's data is spread over: ``auto`` (None: the event log
    decides, `abrouter.router.eventlog.shards`) or an integer 1..`MAX_SHARDS`."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer 1..{MAX_SHARDS}, got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: any free port)."""
    value = at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0..65535, got {text!r}")
    return value


def _shown(url: str) -> str:
    """`url` for an error message: no password, even in a URL too broken to take apart."""
    masked = mask_url(url)
    if "@" in masked and MASK not in masked:  # "redis//user:pw@host": no scheme, so no userinfo
        masked = f"{MASK}@{masked.rpartition('@')[2]}"
    return masked


def redis_url(text: str) -> str:
    """A Redis URL redis-py can open: ``redis://HOST:PORT/DB``, ``rediss://...`` or ``unix:///path``."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"is not a valid URL ({exc}): {_shown(text)!r}") from None
    if parts.scheme not in REDIS_SCHEMES or (parts.scheme != "unix" and not parts.hostname):
        raise argparse.ArgumentTypeError(
            f"must be a URL like redis://HOST:6379/0 (or rediss://, unix:///PATH), got {_shown(text)!r}"
        )
    return text


def port_pair(text: str) -> tuple[int, int]:
    """Two different TCP ports, ``18181,18182``."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"must be two ports, PORT,PORT, got {text!r}")
    first, second = (port(part.strip()) for part in parts)
    if first == second or 0 in (first, second):
        raise argparse.ArgumentTypeError(f"must be two different ports above 0, got {text!r}")
    return first, second


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def namespace(text: str) -> str:
    """A Kubernetes namespace: a DNS-1123 label."""
    if not _DNS_LABEL.match(text):
        raise argparse.ArgumentTypeError(f"must be a namespace (a lowercase DNS label, e.g. ml), got {text!r}")
    return text
