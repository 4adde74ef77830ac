"""Which experiment a request belongs to, and the model name it asks for. Pure.

One router serves several experiments (issue 16). Each has a `Match` (in its spec): a
model name, a path glob, a host, header values; every field it gives must match, and
one that gives none matches every request. `Gateway` is built once per change of the
set of experiments and answers `find` for every request.

**Which match wins** when several match the same request: the most specific one, in
this order:

1. one that names a model beats one that does not;
2. then one that names a host;
3. then one that names a path, the longer its literal prefix (the part before the
   first ``*``, ``?`` or ``[``) the more specific;
4. then the one with more header conditions;
5. and between matches equal on all of these, the experiment whose name sorts first.

Two experiments whose matches are identical (the same model, host, path and headers,
or both matching everything) plainly overlap: `Gateway` refuses them, naming both.

**The model name** of a request is read from its path first: the Open Inference
Protocol v2 (``/v2/models/NAME[/versions/V]/...``) and KServe v1
(``/v1/models/NAME:predict``); over gRPC, an OIP ``ModelInfer`` request's ``model_name``
(the adapter reads it, `abrouter.router.grpc.oip`). Only when the path names none, and only when some
experiment matches by model, is a JSON body's top-level ``"model"`` read (the
OpenAI-compatible servers' way), and only from a body the router holds whole anyway
(`abrouter.router.stream.hold_whole`: at most 256 KiB with a Content-Length): a streamed
upload is never held back to look at it. The cost on a request that needs it is one
pass of the C JSON scanner over the body's top level.

Matching by model is a dictionary lookup, so it does not grow with the number of
experiments; only experiments matched by host, path or headers alone are tried in turn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import translate
from typing import Literal

from abrouter.contract.fields import ConfigError
from abrouter.contract.model import Match
from abrouter.router.grpc import oip

_OIP = "/v2/models/"
_KSERVE = "/v1/models/"
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
#: The C scanner of a JSON string's remainder (after its opening quote): (value, end).
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class ModelAt:
    """Where a request names its model: the name, and its span in the path or the body's text."""

    name: str
    #: "message": a gRPC ModelInferRequest's ``model_name`` (`abrouter.router.grpc.oip`; no span).
    where: Literal["path", "body", "message"]
    start: int
    end: int


def model_in_path(target: str) -> ModelAt | None:
    """The model named by an OIP v2 or KServe v1 path (`target`: path and query)."""
    if target.startswith(_OIP):
        start, stops = len(_OIP), "/?"
    elif target.startswith(_KSERVE):
        start, stops = len(_KSERVE), ":/?"
    else:
        return None
    end = start
    while end < len(target) and target[end] not in stops:
        end += 1
    return ModelAt(target[start:end], "path", start, end) if end > start else None


def model_in_body(body: bytes) -> ModelAt | None:
    """The top-level ``"model"`` of a JSON object body when it is a string (spans in the decoded text)."""
    if not body or body.lstrip()[:1] != b"{":
        return None
    try:
        text = body.decode("utf-8")
        return _top_level_model(text)
    except (UnicodeDecodeError, ValueError, IndexError, RecursionError):
        return None


def _top_level_model(text: str) -> ModelAt | None:
    """Walk the object's top-level keys with the C scanner; nested values are skipped whole."""
    i = _WS.match(text, 0).end() + 1  # type: ignore[union-attr]  # past "{"
    while True:
        i = _WS.match(text, i).end()  # type: ignore[union-attr]
        if text[i] != '"':
            return None  # "}" (no model) or not JSON
        key, i = scanstring(text, i + 1)
        i = _WS.match(text, i).end()  # type: ignore[union-attr]
        if text[i] != ":":
            return None
        i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
        start = i
        value, i = _DECODER.raw_decode(text, i)
        if key == "model":
            return ModelAt(value, "body", start, i) if isinstance(value, str) else None
        i = _WS.match(text, i).end()  # type: ignore[union-attr]
        if text[i] != ",":
            return None
        i += 1


def rewrite_path(target: str, at: ModelAt, name: str) -> str:
    return target[: at.start] + name + target[at.end :]


def rewrite_body(body: bytes, at: ModelAt, name: str) -> bytes:
    text = body.decode("utf-8")
    return (text[: at.start] + json.dumps(name) + text[at.end :]).encode("utf-8")


def renamed(target: str, body: bytes | None, at: ModelAt | None, name: str | None) -> tuple[str, bytes | None]:
    """The target, and the body when it changes (else None), with the model renamed to `name`
    where the request named it (a variant's `model:`; nothing to do without one)."""
    if at is None or name is None or name == at.name:
        return target, None
    if at.where == "path":
        return rewrite_path(target, at, name), None
    if body is None:
        return target, None
    if at.where == "message":
        return target, oip.with_model_name(body, name)
    return target, rewrite_body(body, at, name)


def host_of(headers: Iterable[tuple[str, str]]) -> str | None:
    """The Host header's name, lowercased, without its port."""
    for key, value in headers:
        if len(key) == 4 and key.lower() == "host":
            value = value.strip().lower()
            if value.startswith("["):  # an IPv6 literal
                return value[: value.find("]") + 1] if "]" in value else value
            return value.partition(":")[0]
    return None


@dataclass(frozen=True)
class _Route:
    name: str
    match: Match
    path: re.Pattern[str] | None

    @property
    def rank(self) -> tuple[int, int, int, int, str]:
        """Sorts the most specific first (see the module docstring)."""
        m = self.match
        prefix = len(re.split(r"[*?\[]", m.path, maxsplit=1)[0]) if m.path is not None else -1
        return (-(m.model is not None), -(m.host is not None), -prefix, -len(m.headers), self.name)

    def accepts(self, path: str, host: str | None, headers: Mapping[str, str]) -> bool:
        m = self.match
        if m.host is not None and m.host != host:
            return False
        if self.path is not None and self.path.match(path) is None:
            return False
        return all(headers.get(k) == v for k, v in m.headers)


class Gateway:
    """The experiments' matches, indexed; `find` is what a request asks."""

    def __init__(self, matches: Mapping[str, Match], *, rewrites: bool = False) -> None:
        """`rewrites`: some variant renames the model, so a body's model is read even when no match needs it."""
        _refuse_overlaps(matches)
        routes = sorted(
            (
                _Route(name, m, re.compile(translate(m.path)) if m.path is not None else None)
                for name, m in matches.items()
            ),
            key=lambda r: r.rank,
        )
        self.by_model: dict[str, list[_Route]] = {}
        self.others: list[_Route] = []
        for route in routes:
            if route.match.model is not None:
                self.by_model.setdefault(route.match.model, []).append(route)
            else:
                self.others.append(route)
        self._bodies = bool(self.by_model) or rewrites
        self._headers = any(r.match.headers for r in routes)
        self._hosts = any(r.match.host is not None for r in routes)
        #: The only experiment, matching everything: nothing to look at per request.
        self.only = routes[0].name if len(routes) == 1 and routes[0].match.is_everything else None

    @property
    def reads_models(self) -> bool:
        """Whether a request's model name matters: some experiment matches by it, or some variant renames it."""
        return self._bodies

    def find(
        self, target: str, headers: Iterable[tuple[str, str]], body: bytes | None, *, model: ModelAt | None = None
    ) -> tuple[str, ModelAt | None] | None:
        """The experiment of a request, and where it names its model (for the per-arm rewrite).

        `model`: the model name the adapter read itself (a gRPC ModelInferRequest's).
        """
        at = model or model_in_path(target)
        if at is None and body is not None and self._bodies:
            at = model_in_body(body)
        if self.only is not None:
            return self.only, at
        path = target.partition("?")[0]
        host = host_of(headers) if self._hosts else None
        values = {k.lower(): v for k, v in headers} if self._headers else {}
        if at is not None:
            for route in self.by_model.get(at.name, ()):
                if route.accepts(path, host, values):
                    return route.name, at
        for route in self.others:
            if route.accepts(path, host, values):
                return route.name, at
        return None

    def describe(self) -> str:
        """The matches for a message: what a request must look like to be served."""
        parts = [f"{r.name}: {_describe(r.match)}" for group in self.by_model.values() for r in group]
        parts += [f"{r.name}: {_describe(r.match)}" for r in self.others]
        return "; ".join(parts)


def _describe(m: Match) -> str:
    if m.is_everything:
        return "every request"
    words = [f"{k} {v}" for k, v in (("model", m.model), ("host", m.host), ("path", m.path)) if v is not None]
    words += [f"header {k}: {v}" for k, v in m.headers]
    return ", ".join(words)


def _refuse_overlaps(matches: Mapping[str, Match]) -> None:
    seen: dict[Match, str] = {}
    for name, m in sorted(matches.items()):
        if m in seen:
            raise ConfigError(
                "match",
                f"experiments {seen[m]!r} and {name!r} match the same requests ({_describe(m)}); "
                "give one of them a narrower match (model, host, path or headers)",
            )
        seen[m] = name
