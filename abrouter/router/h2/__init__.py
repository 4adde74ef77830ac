"""HTTP/2 of our own, for the gRPC listener and its upstream client: the frames (`frames`), header
compression (`hpack`), both pure, and one connection on `asyncio.Protocol` for either side
(`connection`): flow control both ways, settings, pings, resets and GOAWAY.

They and the gRPC relay are compiled with mypyc when installed with a C compiler; `native`
decides, before any of them is imported, whether this process loads that build or the
``.py`` files (``ABROUTER_PURE=1``)."""

from abrouter.router.h2 import native

native.install()
