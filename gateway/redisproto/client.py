"""A lean Redis client for the rate limiter: RESP2 over one pipelined asyncio connection.

redis-py's asyncio client spends 110-220 µs of CPU per command on this machine in its
connection pool, command packing and reply handling (measured: a GET, and the rate-limit
script; hiredis changes little), two to four times a whole proxied request. The rate limiter
needs one command per decision, so it speaks the protocol itself, the way the gateway's
upstream transport speaks HTTP/1.1: commands are written at once on one connection
(pipelined), replies arrive in order and resolve the waiting futures in turn.

- `parse_reply` is pure: simple strings, errors, integers, bulk strings and arrays (RESP2).
  A reply not yet whole is `INCOMPLETE`, not an exception (no exceptions as control flow).
- `RedisClient` connects lazily (TCP, TLS for ``rediss://``, or a unix socket), sends AUTH and
  SELECT from the URL first, and after a failure connects again on the next command. At most
  `MAX_PENDING` commands wait for replies on the connection; beyond that a command fails at
  once rather than queueing without bound behind a stalled server. A caller that stops waiting
  (its budget ran out) leaves its place in line, and the reply that comes later is dropped.

The URL is parsed by redis-py (`redis.connection.parse_url`), which stays the reference for
what a Redis URL means.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, Final

from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from gateway.redisproto.errors import ConnectionGone, RedisError

# Replies awaited at once on the connection.
MAX_PENDING: Final = 1024
# The longest reply line, bulk string or array accepted by default (the rate limiter's replies
# are a few dozen bytes; the cache's client raises it to its largest entry).
MAX_REPLY: Final = 1 << 20

Reply = int | bytes | str | list[Any] | None


class _Missing:
    """What `parse_reply` returns while the buffer does not hold a whole reply yet."""


INCOMPLETE: Final = _Missing()


def parse_reply(
    data: bytes | bytearray, start: int = 0, limit: int = MAX_REPLY
) -> tuple[Reply | RedisError | _Missing, int]:
    """One reply from ``data`` at ``start``: (value, offset after it), or (`INCOMPLETE`,
    ``start``) when the data ends first. A sentinel rather than an exception: a reply split
    over two reads is the common case under load. ValueError when it is not RESP2."""
    end = data.find(b"\r\n", start)
    if end < 0:
        if len(data) - start > limit:
            raise ValueError("a reply line longer than the limit")
        return INCOMPLETE, start
    kind = data[start : start + 1]
    line = bytes(data[start + 1 : end])
    after = end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), after
    if kind == b"-":
        return RedisError(line.decode("utf-8", "replace")), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if size > limit:
            raise ValueError(f"a bulk string of {size} bytes")
        if len(data) < after + size + 2:
            return INCOMPLETE, start
        if data[after + size : after + size + 2] != b"\r\n":
            raise ValueError("a bulk string without its CRLF")
        return bytes(data[after : after + size]), after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        if count > limit:
            raise ValueError(f"an array of {count} items")
        items: list[Any] = []
        for _ in range(count):
            item, after = parse_reply(data, after, limit)
            if isinstance(item, _Missing):
                return INCOMPLETE, start
            items.append(item)
        return items, after
    raise ValueError(f"not a RESP2 reply: {bytes(data[start : start + 16])!r}")


def encode_command(*parts: bytes | str | int | float) -> bytes:
    """A command as a RESP array of bulk strings."""
    chunks = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, bytes):
            data = part
        elif isinstance(part, str):
            data = part.encode()
        else:
            data = repr(part).encode()
        chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(chunks)


class _Protocol(asyncio.Protocol):
    """One connection: replies resolve the pending futures in order."""

    def __init__(self, lost: asyncio.Future[None], limit: int) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Reply]] = deque()
        self.buffer = bytearray()
        self.closed = False
        self._lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        try:
            while offset < len(buffer):
                reply, offset = parse_reply(buffer, offset, self.limit)
                if isinstance(reply, _Missing):
                    break
                if not self.pending:
                    raise ValueError("a reply nobody asked for")
                waiter = self.pending.popleft()
                if waiter.done():
                    continue  # its caller stopped waiting (budget): the reply is dropped
                if isinstance(reply, RedisError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except ValueError as error:
            self._fail(ConnectionGone(f"bad reply from Redis: {error}"))
            if self.transport is not None:
                self.transport.abort()
            return
        del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionGone(f"Redis connection lost: {exc}" if exc else "Redis closed"))
        if not self._lost.done():
            self._lost.set_result(None)

    def _fail(self, error: Exception) -> None:
        self.closed = True
        while self.pending:
            waiter = self.pending.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class RedisClient:
    """Commands to one Redis server over one lazily (re)connected, pipelined connection."""

    def __init__(self, url: str, connect_timeout: float = 1.0, max_reply: int = MAX_REPLY) -> None:
        self._max_reply = max_reply
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._host: str | None = options.get("host")
        self._port: int = int(options.get("port", 6379))
        self._path: str | None = options.get("path")
        self._db = int(options.get("db", 0) or 0)
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        kind = options.get("connection_class")
        self._tls = ssl.create_default_context() if kind is SSLConnection else None
        if kind is UnixDomainSocketConnection and not self._path:
            raise ValueError("a unix:// Redis URL needs a path")
        self._connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    def raise_max_reply(self, max_reply: int) -> None:
        """Accept replies up to ``max_reply`` bytes from now on (never lowers the limit)."""
        if max_reply > self._max_reply:
            self._max_reply = max_reply
            if self._protocol is not None:
                self._protocol.limit = max_reply

    async def command(self, *parts: bytes | str | int | float) -> Reply:
        """Send one command and wait for its reply (RedisError for an error reply)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await self._send(protocol, encode_command(*parts))

    async def _send(self, protocol: _Protocol, data: bytes) -> Reply:
        if len(protocol.pending) >= MAX_PENDING:
            raise ConnectionGone(f"{MAX_PENDING} commands already wait for Redis")
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        protocol.pending.append(waiter)
        assert protocol.transport is not None
        protocol.transport.write(data)
        return await waiter

    async def _connect(self) -> _Protocol:
        # One connection attempt at a time; concurrent commands wait for it.
        connecting = self._connecting
        if connecting is not None:
            return await asyncio.shield(connecting)
        loop = asyncio.get_running_loop()
        connecting = self._connecting = loop.create_future()
        try:
            protocol = await asyncio.wait_for(self._open(), self._connect_timeout)
        except BaseException as error:
            if not connecting.done():
                connecting.set_exception(
                    error if isinstance(error, Exception) else ConnectionGone("cancelled")
                )
                connecting.exception()  # retrieved: waiters get it, nobody else must
            raise
        finally:
            self._connecting = None
        self._protocol = protocol
        connecting.set_result(protocol)
        return protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()
        protocol = _Protocol(lost, self._max_reply)
        if self._path:
            await loop.create_unix_connection(lambda: protocol, self._path)
        else:
            host = self._host or "127.0.0.1"
            await loop.create_connection(lambda: protocol, host, self._port, ssl=self._tls)
        setup = []
        if self._password is not None:
            if self._username:
                setup.append(
                    self._send(protocol, encode_command("AUTH", self._username, self._password))
                )
            else:
                setup.append(self._send(protocol, encode_command("AUTH", self._password)))
        if self._db:
            setup.append(self._send(protocol, encode_command("SELECT", self._db)))
        try:
            await asyncio.gather(*setup)
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.abort()
            raise
        return protocol

    async def close(self) -> None:
        protocol = self._protocol
        self._protocol = None
        if protocol is not None and protocol.transport is not None and not protocol.closed:
            protocol.transport.close()
