"""A raw-socket client for the security suite: exact bytes out, every byte back, and the end.

Malformed requests must reach the gateway byte for byte, so nothing here is an HTTP client: a
test writes bytes, then reads everything until the gateway closes (or a timeout says it did
not), and parses what came back with llhttp as a sequence of responses. What the suite checks
from it: the status of each response, that every byte received belongs to a well-formed
HTTP/1.1 response, and whether and how the connection ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import httptools

from tests.harness import LOCAL

# How long a read waits for the gateway before deciding the connection stays open: a guard
# against a hang, never a timing assertion (every exchange here is local and immediate).
IDLE = 5.0


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    version: str

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def closes(self) -> bool:
        return any(v.strip().lower() == b"close" for v in self.header(b"connection"))

    def json(self) -> Any:
        return json.loads(self.body)


class _Parser:
    """httptools callbacks collecting responses one after another."""

    def __init__(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.responses: list[Response] = []
        self.head_only = head_only
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self.in_message = False

    def on_message_begin(self) -> None:
        self.in_message = True
        self._headers = []
        self._body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((bytes(name), bytes(value)))

    def on_headers_complete(self) -> bool | None:
        # A response to HEAD has no body whatever its fields say (RFC 9110 §9.3.2): llhttp
        # skips the body when this returns True.
        return True if self.head_only else None

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.in_message = False
        self.responses.append(
            Response(
                int(self.parser.get_status_code()),
                self._headers,
                bytes(self._body),
                str(self.parser.get_http_version()),
            )
        )


def parse_responses(data: bytes, *, closed: bool, head_only: bool = False) -> list[Response]:
    """Every response in ``data``; raises AssertionError on any byte that is not one.

    With ``closed`` the connection's end completes a body without a length (RFC 9112 §6.3
    rule 8); a response cut short otherwise fails.
    """
    state = _Parser(head_only)
    try:
        state.parser.feed_data(data)
        if closed and state.in_message:
            state.parser.feed_data(b"")  # EOF: ends a close-delimited body, or raises
    except httptools.HttpParserError as error:
        problem = f"not a well-formed response stream: {error}: {data[:300]!r}"
        raise AssertionError(problem) from None
    if state.in_message:
        raise AssertionError(f"a response was cut short: {data[-300:]!r}")
    for response in state.responses:
        assert response.version == "1.1", response
    return state.responses


@dataclass
class Conversation:
    """What the gateway sent back on one connection, and how that connection ended."""

    data: bytes
    # The gateway closed the connection (EOF or reset) rather than leaving it open.
    closed: bool
    # The end was a reset rather than a clean FIN.
    reset: bool = False
    responses: list[Response] = field(default_factory=list)

    @property
    def statuses(self) -> list[int]:
        return [response.status for response in self.responses]


async def read_until_close(
    reader: asyncio.StreamReader, idle: float = IDLE
) -> tuple[bytes, bool, bool]:
    """Everything the peer sends until it closes, or until ``idle`` seconds pass without a
    byte; (data, closed, reset)."""
    received = bytearray()
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), idle)
        except TimeoutError:
            return bytes(received), False, False
        except ConnectionResetError:
            return bytes(received), True, True
        if not chunk:
            return bytes(received), True, False
        received += chunk


async def converse(
    port: int,
    data: bytes,
    *,
    idle: float = IDLE,
    half_close: bool = False,
    head_only: bool = False,
    source: str | None = None,
) -> Conversation:
    """Send ``data`` on a new connection and read until the gateway closes it (or ``idle``
    seconds of silence); ``half_close`` also ends the client's side after sending."""
    reader, writer = await open_raw(port, source=source)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        received, closed, reset = await read_until_close(reader, idle)
    finally:
        await close_writer(writer)
    return Conversation(
        received,
        closed,
        reset,
        parse_responses(received, closed=closed, head_only=head_only),
    )


async def open_raw(
    port: int, *, source: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the gateway, from ``source`` (another loopback address) if given."""
    if source is None:
        return await asyncio.open_connection(LOCAL, port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    try:
        await asyncio.get_running_loop().sock_connect(sock, (LOCAL, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def read_one(reader: asyncio.StreamReader, *, head_only: bool = False) -> Response:
    """Exactly one response from a connection that stays open (Content-Length or chunked)."""
    state = _Parser(head_only)
    async with asyncio.timeout(IDLE):
        while not state.responses:
            data = await reader.read(65536)
            if not data:
                raise AssertionError("the connection closed before a complete response")
            state.parser.feed_data(data)
    assert len(state.responses) == 1, "bytes after the response"
    return state.responses[0]


def request(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    """A request from its request line, field lines and body, CRLF-terminated."""
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body
