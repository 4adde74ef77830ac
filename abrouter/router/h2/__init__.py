"""HTTP/2 of our own, for the gRPC listener and its upstream client: the frames (`frames`), header
compression (`hpack`), both pure, and one connection on `asyncio.Protocol` for either side
(`connection`): flow control both ways, settings, pings, resets and GOAWAY."""
