"""The gRPC wire adapter, on two servers. Our own HTTP/2 (the default): the listener and its
connections (`h2server`), one relayed call per stream (`relay`), the upstream connection
pools (`h2upstream`), on `abrouter.router.h2`. grpc.aio: a server that proxies any method
as raw bytes (`server`), its listener (`listener`), the upstream channels (`upstream`).
Shared pure helpers: status codes, metadata and deadlines (`wire`), the Open Inference
Protocol's model name in a request (`oip`)."""

from abrouter.router.h2 import native

native.install()  # before wire, oip, relay...: which build of them loads (compiled or pure)
