"""The analyzer's exceptions, translated at the boundary (CLI, Redis, files).

::

    AbrouterError (abrouter.errors)
    ├── UserError
    │    ├── ConfigError          a spec that cannot be used (abrouter.contract.fields)
    │    └── InputError           bad input: a summary file, a flag; names the path
    └── AnalysisError             the analyzer's runtime failures
         ├── SourceError          Redis or a file could not be read or written
         │    └── NoDataError     Redis holds nothing for the experiment (a typo, no flush yet)
         ├── ConflictError        a sink found newer weights than the look analysed
         └── UnfinishedError      a decision's weights are written, a later step failed

The CLI maps every `UserError` to exit code 2 and one line. A `SourceError`,
`ConflictError` or `UnfinishedError` is not the user's input being wrong: exit code 1 and one line, and
`analyze --every` logs it and tries again. `NoDataError` is one of them: a look at a
name Redis knows nothing of says so (exit 1) instead of reporting 0 units. Anything else is a bug (a traceback, exit 1).
"""

from __future__ import annotations

from abrouter.errors import AbrouterError, UserError


class InputError(UserError):
    """Input that cannot be analysed; `path` names the bad field, e.g. ``variants[1].units``."""

    def __init__(self, path: str, message: str, *, source: str = "") -> None:
        self.path = path
        self.message = message
        self.source = source
        where = ": ".join(part for part in (source, path) if part)
        super().__init__(f"{where}: {message}" if where else message)


class AnalysisError(AbrouterError):
    """Base of the analyzer's runtime failures."""


class SourceError(AnalysisError):
    """Redis or a file failed (unreachable, unwritable); the cause is chained."""


class ConflictError(AnalysisError):
    """The weights changed since the analysed look (a newer epoch); nothing was written."""


class UnfinishedError(AnalysisError):
    """A decision's weights are written but a later step (Event, scale, status, history) failed.

    The message says what was applied; the next look finishes it (`sinks.kube_pending`).
    """


class NoDataError(SourceError):
    """Redis has no aggregates and no epochs under the experiment's keys."""
