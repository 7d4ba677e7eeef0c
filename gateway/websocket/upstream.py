"""The gateway's connection to the upstream for one WebSocket: its handshake, then its frames.

A new connection per WebSocket, outside the upstream pool (`UpstreamPool.open_tunnel`): it
never carries another request. The protocol sends the handshake, reads the answer with llhttp,
and then either becomes the relay's upstream side (101) or reads the small body of any other
answer so that the server can relay it as a plain response (no tunnel opens).
"""

from __future__ import annotations

import asyncio
from typing import Final, cast

import httptools

from gateway.downstream.connection import TunnelHooks
from gateway.errors import BadGateway, GatewayTimeout
from gateway.messages import Headers

# A non-101 answer to an upgrade is an error page: kept whole up to this, else 502.
MAX_REFUSAL_BODY: Final = 64 * 1024
# The handshake's answer head, as the pool bounds any upstream head.
MAX_HEAD: Final = 64 * 1024


class UpstreamAnswer:
    __slots__ = ("body", "headers", "leftover", "reason", "status")

    def __init__(self, status: int, reason: bytes, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        # A refusal's body; bytes after a 101's head (the first frames).
        self.body = b""
        self.leftover = b""


class UpstreamSide(asyncio.Protocol):
    __slots__ = (
        "_answer",
        "_body",
        "_head_bytes",
        "_headers",
        "_hooks",
        "_parser",
        "_reason",
        "_status",
        "_waiter",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._headers: Headers = []
        self._reason = b""
        self._status = 0
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._answer: UpstreamAnswer | None = None
        self._waiter: asyncio.Future[UpstreamAnswer] = loop.create_future()
        self._hooks: TunnelHooks | None = None

    async def answer(self, head: bytes, within: float) -> UpstreamAnswer:
        """Send the handshake ``head``; the upstream's answer within ``within`` seconds (its
        response timeout), or BadGateway / GatewayTimeout."""
        cast(asyncio.Transport, self.transport).write(head)
        try:
            async with asyncio.timeout(within):
                return await self._waiter
        except TimeoutError:
            self.abort()
            raise GatewayTimeout(
                "the upstream did not answer the WebSocket handshake in time"
            ) from None
        except BaseException:
            self.abort()
            raise

    def attach(self, hooks: TunnelHooks) -> None:
        """The tunnel is open: frames (and the bytes that came with the 101) go to ``hooks``."""
        self._hooks = hooks
        answer = self._answer
        if answer is not None and answer.leftover:
            data, answer.leftover = answer.leftover, b""
            hooks.received(data)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        hooks = self._hooks
        if hooks is not None:
            hooks.received(data)
            return
        parser = self._parser
        if parser is None:
            answer = self._answer
            if answer is not None and answer.status == 101:
                # Frames sent right after the 101 (a greeting), before the relay attached:
                # kept for it. Reading is paused meanwhile, so this is what was in flight.
                answer.leftover += data
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._parser = None
            answer = self._complete_head()
            answer.leftover = data[offset:]
            # Until the relay attaches, the upstream's frames wait in its socket.
            cast(asyncio.Transport, self.transport).pause_reading()
            self._resolve(answer)
        except httptools.HttpParserError as error:
            self._fail(BadGateway(f"invalid answer to the WebSocket handshake: {error}"))
        except BadGateway as error:
            self._fail(error)
        else:
            if self._parser is not None and self._answer is None:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD + MAX_REFUSAL_BODY:
                    self._fail(BadGateway("the answer to the WebSocket handshake is too large"))

    def eof_received(self) -> bool | None:
        parser = self._parser
        if parser is not None and self._answer is not None and not self._waiter.done():
            # A refusal whose body ends with the connection (no length, RFC 9112 §6.3).
            self._finish_refusal()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        hooks = self._hooks
        if hooks is not None:
            hooks.lost()
            return
        if not self._waiter.done():
            self._fail(BadGateway("the upstream closed the connection during the handshake"))

    def pause_writing(self) -> None:
        if self._hooks is not None:
            self._hooks.writable(False)

    def resume_writing(self) -> None:
        if self._hooks is not None:
            self._hooks.writable(True)

    # ------------------------------------------------------------------ llhttp callbacks

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = cast(httptools.HttpResponseParser, self._parser)
        self._status = parser.get_status_code()
        if self._status != 101:
            self._answer = self._complete_head()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        if sum(map(len, self._body)) > MAX_REFUSAL_BODY:
            raise BadGateway("the upstream refused the WebSocket with a body over 64 KiB")

    def on_message_complete(self) -> None:
        if self._answer is not None and not self._waiter.done():
            self._finish_refusal()

    # ------------------------------------------------------------------------ internals

    def _complete_head(self) -> UpstreamAnswer:
        return UpstreamAnswer(self._status, self._reason, self._headers)

    def _finish_refusal(self) -> None:
        answer = cast(UpstreamAnswer, self._answer)
        answer.body = b"".join(self._body)
        self._resolve(answer)
        if self.transport is not None:
            self.transport.close()

    def _resolve(self, answer: UpstreamAnswer) -> None:
        self._answer = answer
        if not self._waiter.done():
            self._waiter.set_result(answer)

    def _fail(self, error: BaseException) -> None:
        self._parser = None
        if not self._waiter.done():
            self._waiter.set_exception(error)
        self.abort()
