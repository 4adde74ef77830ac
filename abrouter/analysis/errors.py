"""The analyzer's exceptions, translated at the boundary (CLI, Redis, files).

::

    AnalysisError                 anything the analyzer reports instead of crashing
    ├── InputError (ValueError)   bad input: a summary file, a flag; names the path
    ├── SourceError               Redis or a file could not be read or written
    └── ConflictError             a sink found newer weights than the look analysed

`InputError` derives from `ValueError` so the CLI maps it, like
`router.experiment.ConfigError`, to exit code 2 and a one-line message. A `SourceError`
is not the user's input being wrong; `analyze --every` logs it and tries again.
"""

from __future__ import annotations


class AnalysisError(Exception):
    """Base of every error the analyzer raises on purpose."""


class InputError(AnalysisError, ValueError):
    """Input that cannot be analysed; `path` names the bad field, e.g. ``variants[1].units``."""

    def __init__(self, path: str, message: str, *, source: str = "") -> None:
        self.path = path
        self.message = message
        self.source = source
        where = ": ".join(part for part in (source, path) if part)
        super().__init__(f"{where}: {message}" if where else message)


class SourceError(AnalysisError):
    """Redis or a file failed (unreachable, unwritable); the cause is chained."""


class ConflictError(AnalysisError):
    """The weights changed since the analysed look (a newer epoch); nothing was written."""
