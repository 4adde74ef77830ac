"""The gRPC wire adapter: a grpc.aio server that proxies any method as raw bytes (`server`),
its listener (`listener`), the upstream channels (`upstream`), and pure helpers: status codes
and metadata (`wire`), the Open Inference Protocol's model name in a request (`oip`)."""
