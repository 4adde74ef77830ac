"""Malformed requests in the log: one WARNING line, at most one per interval.

aiohttp's server logs every request it cannot parse (oversized headers, smuggling
attempts, garbage) as an ERROR with a traceback, and the exception's text can carry the
first bytes of the offending header. Those are the client's mistakes, answered 400 (the
`What held` list of issue 7): a flood of them must not flood the log or copy client
bytes into it. This filter turns them into one short WARNING line, and lets through at
most one per `INTERVAL_S`, saying how many it held back.
"""

from __future__ import annotations

import logging
import time

from aiohttp import http_exceptions

INTERVAL_S = 10.0
_LOGGER = "aiohttp.server"


class MalformedRequests(logging.Filter):
    """Rewrites aiohttp's records of unparsable requests; drops all but one per interval."""

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._next = 0.0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, http_exceptions.HttpProcessingError):
            return True  # anything else (a bug) keeps its traceback
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return False
        self._next = now + self.interval_s
        held, self._held = self._held, 0
        # The first words only: the rest may quote the client's bytes.
        reason = str(exc).split(":", 1)[0].splitlines()[0][:100] if str(exc) else type(exc).__name__
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "malformed request answered %d: %s (%d more in the last %.0f s not logged)"
        record.args = (getattr(exc, "code", 400), reason, held, self.interval_s)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def install() -> None:
    """Add the filter to aiohttp's server logger once per process."""
    logger = logging.getLogger(_LOGGER)
    if not any(isinstance(f, MalformedRequests) for f in logger.filters):
        logger.addFilter(MalformedRequests())
