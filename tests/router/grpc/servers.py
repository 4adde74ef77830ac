"""Real gRPC servers of our own on 127.0.0.1 for the gRPC adapter's tests.

`EchoServer`: grpc.aio with a generic handler, raw bytes, one method per behaviour the
proxy must carry (every kind of call, failures, slow answers, streams that wait for the
client). `OipServer`: a small Open Inference Protocol v2 server built from the protos
tritonclient ships (``service_pb2_grpc``), for the unmodified ``tritonclient.grpc`` client.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

FAIL_TRAILERS = (("why", "because"), ("why-bin", b"\x00\x01\xff"))
#: The unary behaviours by method path, in both of the router's shapes: a method it does not
#: know (proxied stream-shaped) and one it knows to be unary (`wire.UNARY_METHODS`).
UNARY_PATHS = {
    "any": {name: f"/test.Echo/{name}" for name in ("Unary", "Fail", "Metadata", "Slow")},
    "known-unary": {
        "Unary": "/tensorflow.serving.PredictionService/Predict",
        "Fail": "/tensorflow.serving.PredictionService/Classify",
        "Metadata": "/tensorflow.serving.PredictionService/GetModelMetadata",
        "Slow": "/tensorflow.serving.PredictionService/Regress",
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EchoServer:
    """Methods under ``/test.Echo/``; every answer starts with the server's name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: grpc.aio.Server | None = None
        self.port = 0
        #: Set by a test: lets `/test.Echo/Wait` finish its stream.
        self.release = asyncio.Event()
        #: Whether `/test.Echo/Wait` finished because it was released (not by its own timeout).
        self.released_in_time: list[bool] = []
        self.cancelled = 0
        self.big_sent = 0
        self.calls: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> EchoServer:
        # Metadata up to 1 MiB (gRPC's default is 16 KiB): the tests send header blocks beyond one HTTP/2 frame.
        big = [("grpc.max_metadata_size", 1 << 20), ("grpc.absolute_max_metadata_size", 1 << 20)]
        self.server = grpc.aio.server(options=big)
        self.server.add_generic_rpc_handlers((_EchoHandler(self),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)

    def tag(self, message: bytes) -> bytes:
        return self.name.encode() + b":" + message

    # --- the behaviours ---

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.send_initial_metadata((("served-by", self.name),))
        context.set_trailing_metadata((("trailer-x", "t"),))
        return self.tag(request)

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        context.set_trailing_metadata(FAIL_TRAILERS)
        await context.abort(grpc.StatusCode[request.decode()], f"{self.name} refuses: no such thing")
        raise AssertionError("unreachable")

    async def metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        pairs = [(k, v if isinstance(v, str) else v.hex()) for k, v in context.invocation_metadata() or ()]
        return json.dumps([*pairs, ("time-remaining", context.time_remaining())]).encode()

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.tag(request)

    async def server_stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield self.tag(b"%d" % i)

    async def big_stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """`request` messages of 1 MiB each, counting those the library took (`big_sent`)."""
        chunk = b"x" * (1 << 20)
        for _ in range(int(request)):
            yield chunk
            self.big_sent += 1

    async def wait(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """One message, then nothing until the test has seen it (`release`), then the last one."""
        yield self.tag(b"first")
        try:
            await asyncio.wait_for(self.release.wait(), 20)
            self.released_in_time.append(True)
        except TimeoutError:
            self.released_in_time.append(False)
        yield self.tag(b"last")

    async def client_stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        return self.tag(b"+".join([m async for m in requests]))

    async def bidi(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for message in requests:
            yield self.tag(message)


class _EchoHandler(grpc.GenericRpcHandler):
    def __init__(self, echo: EchoServer) -> None:
        self.echo = echo

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        e = self.echo
        method = details.method
        e.calls.append(method)
        unary = {"Unary": e.unary, "Fail": e.fail, "Metadata": e.metadata, "Slow": e.slow}
        for paths in UNARY_PATHS.values():
            for name, path in paths.items():
                if method == path:
                    return grpc.unary_unary_rpc_method_handler(unary[name])
        name = method.rpartition("/")[2]
        streams = {"ServerStream": e.server_stream, "Wait": e.wait, "BigStream": e.big_stream}
        if name in streams:
            return grpc.unary_stream_rpc_method_handler(streams[name])
        if name == "ClientStream":
            return grpc.stream_unary_rpc_method_handler(e.client_stream)
        if name == "Bidi":
            return grpc.stream_stream_rpc_method_handler(e.bidi)
        return None  # UNIMPLEMENTED


class OipServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """An OIP v2 model server: INPUT0 (INT32) in, OUTPUT0 = INPUT0 + `offset` out, so each arm answers its own."""

    def __init__(self, name: str, offset: int) -> None:
        self.name = name
        self.offset = offset
        self.infer_calls = 0
        #: The model_name of every ModelInfer request, as it arrived.
        self.models: list[str] = []

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(name=self.name, version="1", extensions=[])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=request.name,
            versions=["1"],
            platform="python",
            inputs=[tensor(name="INPUT0", datatype="INT32", shape=[-1])],
            outputs=[tensor(name="OUTPUT0", datatype="INT32", shape=[-1])],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.infer_calls += 1
        self.models.append(request.model_name)
        values = np.frombuffer(request.raw_input_contents[0], dtype=np.int32)
        out = (values + self.offset).astype(np.int32)
        return service_pb2.ModelInferResponse(
            model_name=request.model_name,
            model_version="1",
            id=request.id,
            outputs=[
                service_pb2.ModelInferResponse.InferOutputTensor(name="OUTPUT0", datatype="INT32", shape=[len(out)])
            ],
            raw_output_contents=[out.tobytes()],
        )

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            yield service_pb2.ModelStreamInferResponse(infer_response=await self.ModelInfer(request, context))


class OipServer:
    def __init__(self, name: str, offset: int) -> None:
        self.servicer = OipServicer(name, offset)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> OipServer:
        self.server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)


class ResettingServer:
    """An HTTP/2 server (python-hyper's `h2`) that resets every stream: before any answer
    (``REFUSED_STREAM``), or after the head and a first message (``INTERNAL_ERROR``) with `after_head`."""

    def __init__(self, *, after_head: bool = False) -> None:
        self.after_head = after_head
        self.server: asyncio.Server | None = None
        self.port = 0
        self.resets = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> ResettingServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection
        import h2.errors
        import h2.events

        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.resets += 1
                    if self.after_head:
                        conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/grpc")])
                        conn.send_data(event.stream_id, b"\x00\x00\x00\x00\x05first")
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    else:
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            writer.write(conn.data_to_send())
        writer.close()
