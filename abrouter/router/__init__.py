"""The router: the request path (exchange, assignment, request ids), its wire adapters and the event log."""

from abrouter.router.h2 import native

native.install()  # before any module of the router: which build of the compiled ones loads (compiled or pure)
