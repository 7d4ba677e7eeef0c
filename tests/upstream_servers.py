"""Small real upstream servers on 127.0.0.1:0 for the upstream transport tests.

``RawUpstream`` runs a handler over asyncio streams so a test can write exact bytes (framing
and fault cases) and see the exact bytes it receives; ``AioUpstream`` is an aiohttp
low-level server for well-behaved upstreams. Both count TCP connections and close every
socket they opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, ClassVar

import pytest
from aiohttp import web

from gateway.config.model import (
    PoolConfig,
    Target,
    UpstreamConfig,
    UpstreamTimeouts,
    UpstreamTLS,
)
from gateway.upstream import pool as pool_module
from gateway.upstream.connection import UpstreamConnection

LOCAL = "127.0.0.1"

RawHandler = Callable[["RawConnection"], Awaitable[None]]


@dataclass(slots=True)
class RawRequest:
    """A request as the upstream read it off the wire."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    head: bytes  # the exact head bytes, request line to blank line
    body: bytes  # decoded body
    raw_body: bytes  # the body bytes exactly as framed on the wire

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


@dataclass(slots=True)
class RawConnection:
    """One accepted connection, handed to a RawUpstream handler."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    index: int  # 0 for the first connection accepted, 1 for the next, ...
    requests: list[RawRequest] = field(default_factory=list)

    async def read_head(self) -> RawRequest | None:
        """The next request head (body not read); None on a clean EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        except ConnectionError:
            return None
        lines = head[:-4].split(b"\r\n")
        method, target, _version = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip()))
        request = RawRequest(method, target, headers, head, b"", b"")
        self.requests.append(request)
        return request

    async def read_body(self, request: RawRequest) -> None:
        """Read the body the head announced, keeping both decoded and raw bytes."""
        length = request.header(b"content-length")
        if length is not None:
            request.body = request.raw_body = await self.reader.readexactly(int(length))
            return
        if (request.header(b"transfer-encoding") or b"").lower() != b"chunked":
            return
        raw = bytearray()
        body = bytearray()
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            raw += size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                raw += await self.reader.readuntil(b"\r\n")
                break
            data = await self.reader.readexactly(size + 2)
            raw += data
            body += data[:-2]
        request.body = bytes(body)
        request.raw_body = bytes(raw)

    async def read_request(self) -> RawRequest | None:
        request = await self.read_head()
        if request is not None:
            await self.read_body(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_eof(self) -> None:
        """Read until the client closes its side (discarding anything it sends)."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    def reset(self) -> None:
        """Close with RST instead of FIN (SO_LINGER 0)."""
        transport = self.writer.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


class RawUpstream:
    """A TCP server running ``handler`` per connection; the connection closes when it returns."""

    def __init__(
        self, handler: RawHandler, *, ssl_context: ssl.SSLContext | None = None, port: int = 0
    ) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.connections: list[RawConnection] = []
        self.closed_connections = 0
        self._closed_event = asyncio.Event()
        # 0: a free port, chosen at start.
        self.port = port

    @property
    def accepted(self) -> int:
        return len(self.connections)

    def target(self, scheme: str = "http", host: str = LOCAL) -> Target:
        return Target(scheme, host, self.port)  # type: ignore[arg-type]

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(
            self._accept, LOCAL, self.port, ssl=self._ssl, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def wait_closed_connections(self, count: int) -> None:
        """Until ``count`` connections have ended (the handler returned or the peer left)."""
        while self.closed_connections < count:
            self._closed_event.clear()
            await self._closed_event.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        conn = RawConnection(reader, writer, len(self.connections))
        self.connections.append(conn)
        try:
            try:
                await self._handler(conn)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()
        except asyncio.CancelledError:
            # Shutting down. Ending normally matters: asyncio's stream callback calls
            # task.exception(), which raises on a cancelled task.
            pass
        finally:
            self.closed_connections += 1
            self._closed_event.set()
            self._tasks.discard(task)


def keep_alive(respond: Callable[[RawRequest], bytes]) -> RawHandler:
    """A handler answering every request on the connection with ``respond(request)``."""

    async def handler(conn: RawConnection) -> None:
        while (request := await conn.read_request()) is not None:
            await conn.send(respond(request))

    return handler


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    """A keep-alive 200 with a Content-Length body."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


AioHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class AioUpstream:
    """An aiohttp low-level server; records the client port of every request."""

    def __init__(self, handler: AioHandler, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._runner: web.ServerRunner | None = None
        self.peers: list[int] = []
        self.port = 0

    def target(self, scheme: str = "http", host: str = LOCAL) -> Target:
        return Target(scheme, host, self.port)  # type: ignore[arg-type]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        peer: Any = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.peers.append(peer[1])
        return await self._handler(request)

    async def __aenter__(self) -> AioUpstream:
        self._runner = web.ServerRunner(web.Server(self._handle), shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCAL, 0, ssl_context=self._ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def upstream_config(
    *targets: Target,
    max_connections: int = 16,
    max_idle: int = 16,
    idle_timeout: float = 30.0,
    connect: float = 2.0,
    response: float = 5.0,
    read: float = 5.0,
    host_header: str = "preserve",
    tls: UpstreamTLS | None = None,
    dns_ttl: float = 30.0,
) -> UpstreamConfig:
    """An upstream config over ``targets`` with test-friendly timeouts."""
    config = UpstreamConfig(
        name="test",
        targets=targets,
        pool=PoolConfig(
            max_connections=max_connections, max_idle=max_idle, idle_timeout=idle_timeout
        ),
        timeouts=UpstreamTimeouts(connect=connect, response=response, read=read),
        host_header=host_header,
        dns_ttl=dns_ttl,
    )
    return replace(config, tls=tls) if tls is not None else config


async def collect(body: AsyncIterator[bytes] | None) -> bytes:
    """The whole body (small test bodies only)."""
    if body is None:
        return b""
    return b"".join([chunk async for chunk in body])


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    """A request body yielding ``parts``."""
    for part in parts:
        yield part


class RecordingConnection(UpstreamConnection):
    """An UpstreamConnection that lets a test find it and wait for its flow-control events."""

    made: ClassVar[list[RecordingConnection]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.reading_paused = asyncio.Event()
        self.writing_paused = asyncio.Event()
        # Which upstream it is connected to, when a test has several.
        self.peer_port: int = transport.get_extra_info("peername")[1]
        RecordingConnection.made.append(self)
        super().connection_made(transport)

    def on_body(self, data: bytes) -> None:
        super().on_body(data)
        if self.read_pauses:
            self.reading_paused.set()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.writing_paused.set()


def record_connections(monkeypatch: pytest.MonkeyPatch) -> list[RecordingConnection]:
    """Make pools build RecordingConnections; returns the list they are added to."""
    made: list[RecordingConnection] = []
    monkeypatch.setattr(RecordingConnection, "made", made)
    monkeypatch.setattr(pool_module.UpstreamPool, "connection_class", RecordingConnection)
    return made
