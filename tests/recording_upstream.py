"""A raw HTTP/1.1 upstream that records what it receives and answers by path, byte for byte.

It is written on `asyncio.start_server` and httptools (llhttp) rather than aiohttp so that what it
records is what came over the wire: the request target as sent, every header field in order with
its original case and duplicates, the body with its framing removed, and whether that framing was
chunked. Each request also records the number of the TCP connection it came on.

The answer depends only on the path (``/r/<kind>``, anything else is ``default``), the method
(HEAD gets the head alone) and the version (an HTTP/1.0 request never gets chunked framing,
RFC 9112 §6.1), so two runs of the same request produce the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
from dataclasses import dataclass, field
from types import TracebackType

import httptools

from tests.harness import LOCAL


@dataclass(frozen=True)
class RecordedRequest:
    """One complete request as the upstream parsed it."""

    method: bytes
    # The request target exactly as it appeared on the request line.
    target: bytes
    # "1.0" or "1.1".
    version: str
    # Raw (name, value) pairs in wire order; values as llhttp delivers them (leading OWS removed,
    # trailing OWS kept).
    headers: tuple[tuple[bytes, bytes], ...]
    # The body with Content-Length or chunked framing removed.
    body: bytes
    chunked: bool
    # Which accepted TCP connection (numbered from 1) the request came on.
    connection: int


@dataclass(frozen=True)
class Canned:
    """A response: status line, header lines written exactly as given, body and its framing."""

    status: bytes
    fields: tuple[bytes, ...]
    chunks: tuple[bytes, ...] = ()
    chunked: bool = False
    # 204 and 304: no body and no framing field.
    bodiless: bool = False
    close: bool = False
    # No framing field: the body ends when the connection closes (RFC 9112 §6.3, rule 8).
    until_close: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


SERVER = b"Server: recording-upstream"
BIG_BODY = bytes(range(256)) * 4096  # 1 MiB
GZIP_BODY = gzip.compress(b"compressed by the upstream, not by the gateway\n" * 64, mtime=0)

CANNED: dict[bytes, Canned] = {
    b"default": Canned(b"200 OK", (SERVER, b"Content-Type: text/plain"), (b"default response\n",)),
    b"cl": Canned(
        b"200 OK",
        (
            SERVER,
            b"Content-Type: text/plain; charset=utf-8",
            b'ETag: "cl-1"',
            b"Cache-Control: max-age=60",
        ),
        (b"a Content-Length body\n",),
    ),
    b"chunked": Canned(
        b"200 OK",
        (SERVER, b"Content-Type: text/plain", b"X-Framing: chunked"),
        (b"first,", b"second,", b"x" * 5000, b"last\n"),
        chunked=True,
    ),
    b"empty": Canned(b"200 OK", (SERVER,)),
    b"204": Canned(b"204 No Content", (SERVER, b"X-Kind: no-content"), bodiless=True),
    b"304": Canned(
        b"304 Not Modified",
        (SERVER, b'ETag: "v1"', b"Cache-Control: max-age=60"),
        bodiless=True,
    ),
    b"cookies": Canned(
        b"200 OK",
        (
            SERVER,
            b"Set-Cookie: a=1; Path=/; HttpOnly",
            b"X-Between: 1",
            b"Set-Cookie: b=2; Max-Age=60",
            b"Set-Cookie: a=3",
            b"Content-Type: text/plain",
        ),
        (b"cookies\n",),
    ),
    b"reason": Canned(
        b"200 Totally Fine, Thanks (really)",
        (SERVER, b"Content-Type: text/plain"),
        (b"unusual reason\n",),
    ),
    b"big": Canned(b"200 OK", (SERVER, b"Content-Type: application/octet-stream"), (BIG_BODY,)),
    b"spacing": Canned(
        b"200 OK",
        (
            SERVER,
            b"X-Odd:   lots   of   space \t ",
            b"X-Tab:\tvalue\t",
            b"X-Empty:",
            b"x-lower-case: v",
            b"X-UPPER-CASE: V",
        ),
        (b"spacing\n",),
    ),
    b"close": Canned(
        b"200 OK",
        (SERVER, b"Content-Type: text/plain"),
        (b"closing after this\n",),
        close=True,
    ),
    b"eof": Canned(
        b"200 OK",
        (SERVER, b"Content-Type: text/plain"),
        (b"delimited by the end of the connection\n",),
        close=True,
        until_close=True,
    ),
    b"hop": Canned(
        b"200 OK",
        (
            SERVER,
            b"Connection: X-Hop-Response, Upgrade",
            b"X-Hop-Response: 1",
            b"Keep-Alive: timeout=5",
            b"Upgrade: h2c",
            b"X-End-To-End: 1",
        ),
        (b"hop-by-hop fields\n",),
    ),
    b"gzip": Canned(
        b"200 OK",
        (
            SERVER,
            b"Content-Type: text/plain",
            b"Content-Encoding: gzip",
            b"Vary: Accept-Encoding",
        ),
        (GZIP_BODY,),
    ),
}

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n" + SERVER + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)


def canned_for(target: bytes) -> Canned:
    """The canned response a request target selects: ``/r/<kind>``, else ``default``."""
    path = target.split(b"?", 1)[0]
    if path.startswith(b"/r/"):
        return CANNED.get(path[3:], CANNED[b"default"])
    return CANNED[b"default"]


def render(request: RecordedRequest, keep_alive: bool) -> tuple[bytes, bool]:
    """The response bytes for ``request`` and whether the connection closes after them."""
    canned = canned_for(request.target)
    close = canned.close or not keep_alive
    lines = [b"HTTP/1.1 " + canned.status, *canned.fields]
    payload = b""
    if not canned.bodiless:
        if canned.chunked and request.version != "1.0":
            lines.append(b"Transfer-Encoding: chunked")
            # A chunk extension on the first chunk: a recipient must ignore it (RFC 9112 §7.1.1).
            payload = b"".join(
                b"%x%s\r\n%s\r\n" % (len(chunk), b";ext=1" if i == 0 else b"", chunk)
                for i, chunk in enumerate(canned.chunks)
            )
            payload += b"0\r\n\r\n"
        elif canned.until_close:
            payload = canned.body
        else:
            lines.append(b"Content-Length: %d" % len(canned.body))
            payload = canned.body
    if close:
        lines.append(b"Connection: close")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if request.method == b"HEAD":
        payload = b""
    return head + payload, close


class _Connection:
    """httptools callbacks for one TCP connection: collects complete requests in order."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.parser = httptools.HttpRequestParser(self)
        self.complete: list[tuple[RecordedRequest, bool]] = []
        self._target = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._chunked = False

    def on_message_begin(self) -> None:
        self._target = bytearray()
        self._headers = []
        self._body = bytearray()
        self._chunked = False

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((bytes(name), bytes(value)))

    def on_chunk_header(self) -> None:
        self._chunked = True

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        request = RecordedRequest(
            method=bytes(self.parser.get_method()),
            target=bytes(self._target),
            version=str(self.parser.get_http_version()),
            headers=tuple(self._headers),
            body=bytes(self._body),
            chunked=self._chunked,
            connection=self.number,
        )
        self.complete.append((request, bool(self.parser.should_keep_alive())))


@dataclass
class RecordingUpstream:
    """``async with RecordingUpstream() as upstream:`` serves on ``upstream.port``."""

    requests: list[RecordedRequest] = field(default_factory=list)
    # Requests llhttp refused (answered 400 and closed), as the error text.
    rejected: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    # Connections being served: closing their transports ends their handlers.
    _open: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def __aenter__(self) -> RecordingUpstream:
        self._server = await asyncio.start_server(self._serve, LOCAL, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        # Python 3.11's wait_closed does not wait for open connections: end them here. Closing the
        # transport (not cancelling the task) lets each handler leave through its own finally.
        tasks = list(self._open)
        for writer in self._open.values():
            writer.transport.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = writer
        connection = _Connection(next(self._numbers))
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                try:
                    connection.parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    # CONNECT or Upgrade: a gateway must never pass either on to an upstream
                    # that did not agree to switch protocols. Recorded as refused.
                    self.rejected.append("switching protocols (CONNECT or Upgrade)")
                    writer.write(BAD_REQUEST)
                    await writer.drain()
                    return
                except httptools.HttpParserError as error:
                    self.rejected.append(str(error))
                    writer.write(BAD_REQUEST)
                    await writer.drain()
                    return
                ready, connection.complete = connection.complete, []
                for request, keep_alive in ready:
                    self.requests.append(request)
                    response, close = render(request, keep_alive)
                    writer.write(response)
                    await writer.drain()
                    if close:
                        return
        except ConnectionError:
            return
        finally:
            self._open.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
