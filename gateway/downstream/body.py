"""A client's request body as it arrives: a bounded buffer between the parser and the reader."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, Protocol

from gateway.errors import PayloadTooLarge

# Stop reading the client's socket above HIGH_WATER buffered body bytes; resume at LOW_WATER.
# The buffer overshoots HIGH_WATER by at most one socket read.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024


class ReadControl(Protocol):
    """What a body needs from its connection: pausing and resuming the socket."""

    def body_backlog(self, paused: bool) -> None:
        """The body's buffer went above HIGH_WATER (True) or back under LOW_WATER (False)."""


class ConsumeListener(Protocol):
    """Told of every chunk the reader takes (HTTP/2 reopens the stream's window by it)."""

    def body_consumed(self, size: int) -> None: ...


class RequestBody:
    """The body of one request, fed by the connection's parser and read by the route's chain.

    It fails with 413 once more than ``limit`` bytes arrived, however the body is framed, and
    with the parser's error when its framing breaks. ``received`` counts the bytes for the
    access log. Iterating yields non-empty chunks and ends when the message is complete.
    """

    __slots__ = (
        "_backlogged",
        "_buf",
        "_buffered",
        "_control",
        "_error",
        "_limit",
        "_loop",
        "_waiter",
        "complete",
        "consumer",
        "received",
    )

    def __init__(self, control: ReadControl, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._control = control
        self._loop = loop
        self._limit = limit
        self._buf: deque[bytes] = deque()
        self._buffered = 0
        self._backlogged = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        # The message ended as framed (RFC 9112 §6): every body byte was received.
        self.complete = False
        self.received = 0
        # Told of each chunk the reader takes; None for HTTP/1.1, whose socket reads pace it.
        self.consumer: ConsumeListener | None = None

    # -------------------------------------------------------------- connection side

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return  # discarded: the reader is told about the error instead
        received = self.received = self.received + len(data)
        if received > self._limit:
            self.fail(PayloadTooLarge(f"request body exceeds {self._limit} bytes"))
            return
        self._buf.append(data)
        buffered = self._buffered = self._buffered + len(data)
        if buffered > HIGH_WATER and not self._backlogged:
            self._backlogged = True
            self._control.body_backlog(True)
        self._wake()

    def end(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
            self._release_backlog()
            self._wake()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release_backlog(self) -> None:
        self._buf.clear()
        self._buffered = 0
        if self._backlogged:
            self._backlogged = False
            self._control.body_backlog(False)

    def discard(self) -> None:
        """Nobody will read the rest: drop what is buffered and stop holding the socket."""
        self._release_backlog()

    # ------------------------------------------------------------------ reader side

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        while True:
            buf = self._buf
            if buf:
                chunk = buf.popleft()
                buffered = self._buffered = self._buffered - len(chunk)
                if self._backlogged and buffered <= LOW_WATER:
                    self._backlogged = False
                    self._control.body_backlog(False)
                consumer = self.consumer
                if consumer is not None:
                    consumer.body_consumed(len(chunk))
                return chunk
            error = self._error
            if error is not None:
                raise error
            if self.complete:
                raise StopAsyncIteration
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
