"""What the pool hands back: the final response head and a body stream bound to a connection."""

from __future__ import annotations

from typing import Protocol

from gateway.errors import UpstreamAborted
from gateway.messages import BodyStream, Headers


class BodySource(Protocol):
    """The connection side of a response body (implemented by UpstreamConnection)."""

    peak_buffered: int

    async def read_chunk(self, body: ResponseBody) -> bytes: ...

    def chunk_ready(self) -> bool: ...

    def take_complete(self, body: ResponseBody) -> bytes | None: ...

    async def release(self, body: ResponseBody) -> None: ...


class ResponseBody:
    """The response body iterator; detached from its connection once the exchange ends.

    After detaching, iteration ends cleanly if the body had been read to its end and raises
    UpstreamAborted otherwise, so a stale iterator can never read another exchange's bytes.
    """

    __slots__ = ("_ended", "_peak", "source")

    def __init__(self, source: BodySource) -> None:
        self.source: BodySource | None = source
        self._ended = False
        self._peak = 0

    def __aiter__(self) -> ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        source = self.source
        if source is None:
            if self._ended:
                raise StopAsyncIteration
            raise UpstreamAborted("the upstream response was released before its end")
        return await source.read_chunk(self)

    def ready(self) -> bool:
        """Whether the next step of iteration (a chunk, the end or an error) needs no waiting."""
        source = self.source
        return source is None or source.chunk_ready()

    def take_complete(self) -> bytes | None:
        """All that is left of the body, if it is complete and at hand; the exchange then ends.

        None when some of it is still to come (or it failed): iterate instead.
        """
        source = self.source
        if source is None:
            return b"" if self._ended else None
        return source.take_complete(self)

    @property
    def peak_buffered(self) -> int:
        """The most response bytes held in memory at once while this body was read."""
        source = self.source
        return source.peak_buffered if source is not None else self._peak

    def detach(self, *, ended: bool) -> None:
        source = self.source
        if source is not None:
            self._peak = source.peak_buffered
            self.source = None
        self._ended = ended


class UpstreamResponse:
    """The final upstream response head, and its body as a stream."""

    __slots__ = ("_handle", "body", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        *,
        content_length: int | None,
        body: ResponseBody | None,
    ) -> None:
        self.status = status
        self.reason = reason
        # As received, framing and hop-by-hop fields included: the caller filters.
        self.headers = headers
        # The Content-Length of the head when the body is length-delimited (also kept for
        # HEAD and 304, whose head describes the selected representation), else None.
        self.content_length = content_length
        # None when the response has no body at all (HEAD, 1xx, 204, 304, length 0).
        self.body: BodyStream | None = body
        # Kept apart from ``body``, which a caller may wrap or replace.
        self._handle = body

    @property
    def peak_buffered(self) -> int:
        """The most body bytes buffered at once (0 without a body); bounded by flow control."""
        handle = self._handle
        return handle.peak_buffered if handle is not None else 0

    async def release(self) -> None:
        """Return the connection to the pool if the exchange completed cleanly, else close it.

        Idempotent; call it in a ``finally``, also when abandoning the body early.
        """
        handle = self._handle
        if handle is not None:
            source = handle.source
            if source is not None:
                await source.release(handle)
