"""The field validators of every input abrouter reads: specs, custom resources, summaries.

Pure. Each check returns the validated value or raises `ConfigError` with the path of the
bad field (``variants[1].weight: must be >= 0, got -5``), so every reader names its
errors the same way. The summary reader re-labels them as its own `InputError`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from abrouter.errors import UserError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(UserError):
    """An input that cannot be used; `path` names the offending field."""

    def __init__(self, path: str, message: str, *, where: str = "") -> None:
        # One line, whatever the input held: a key or value may carry newlines or controls.
        self.path = _printable(path)
        self.message = _printable(message)
        #: The file and line, when the input was a file ("exp.yaml, line 4").
        self.where = _printable(where)
        super().__init__(": ".join(part for part in (self.where, self.path, self.message) if part))


def _printable(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class Reader:
    """Walks a mapping, remembering the path and the keys read, so unknown keys are named."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            what = "the experiment spec" if not path else ""
            raise ConfigError(path, f"{what} must be a mapping, got {type_name(data)}".lstrip())
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def at(self, key: str) -> str:
        return join(self.path, key)

    def get(self, key: str, default: Any = ..., *, required: bool = False) -> Any:
        self.seen.add(key)
        if key in self.data:
            return self.data[key]
        if required or default is ...:
            raise ConfigError(self.at(key), "is required" + misspelt(key, self.data))
        return default

    def done(self) -> None:
        extra = [str(k) for k in self.data if k not in self.seen]
        if extra:
            hint = suggest(extra[0], self.seen) or f"; known: {', '.join(sorted(self.seen))}"
            raise ConfigError(self.at(extra[0]), "unknown key" + hint)


def suggest(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def misspelt(key: str, item: Mapping[Any, Any]) -> str:
    """For a missing required key: the key the input has instead, when one is close (``wieght``)."""
    close = difflib.get_close_matches(key, sorted(str(k) for k in item if k != key), n=1)
    return f"; found {close[0]!r} (did you mean {key!r}?)" if close else ""


def mapping(value: Any, path: str, *, noun: str = "a mapping") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be {noun}, got {type_name(value)}")
    return value


def required(item: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in item:
        raise ConfigError(join(path, key), "is required" + misspelt(key, item))
    return item[key]


def known_keys(item: Mapping[str, Any], keys: Collection[str], path: str) -> None:
    for key in item:
        if key not in keys:
            hint = suggest(str(key), keys) or f"; known: {', '.join(sorted(keys))}"
            raise ConfigError(join(path, str(key)), "unknown key" + hint)


def string(value: Any, path: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"must be a non-empty string, got {type_name(value)}")
    if pattern is not None and not pattern.match(value):
        raise ConfigError(path, f"must be {what}, got {value!r}")
    return value


def number(
    value: Any, path: str, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"must be a number, got {type_name(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer with hundreds of digits
        raise ConfigError(path, "must be finite, got a number too large for a float") from None
    if not math.isfinite(value):
        raise ConfigError(path, f"must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(path, f"must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ConfigError(path, f"must be <= {high:g}, got {value:g}")
    return float(value)


def integer(value: Any, path: str, *, low: int = 0, high: int | None = None) -> int:
    result = number(value, path, low=low, high=high)
    if result != int(result):
        raise ConfigError(path, f"must be an integer, got {value}")
    return int(result)


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, got {type_name(value)}")
    return value


def choice(value: Any, path: str, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise ConfigError(path, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def list_of(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list, got {type_name(value)}")
    return value


def duration(value: Any, path: str) -> float:
    """Seconds from a number or a string like "90s", "15m", "12h", "14d"."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ConfigError(path, f"must be a duration like 30s, 15m, 12h or 14d, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
        if seconds <= 0:  # "0s" would disable a timeout on aiohttp, like no timeout at all
            raise ConfigError(path, f"must be a duration greater than 0, got {value!r}")
        return seconds
    return number(value, path, low=0, low_open=True)
