"""A request body that a retry can send again, kept only while it is small enough.

Each attempt reads through its own iterator: first what earlier attempts already pulled from
the client, then more from the client. What is pulled is kept as long as the total stays within
``limit`` (a route's ``retries.max_replay_body``); past it the kept chunks are dropped and the
body is no longer replayable, so a large upload is never held in memory for a retry that
might not come.
"""

from __future__ import annotations

from gateway.messages import BodyStream


class ReplayableBody:
    __slots__ = ("_kept", "_limit", "_size", "_source", "complete", "replayable")

    def __init__(self, source: BodyStream, limit: int) -> None:
        self._source = source
        self._limit = limit
        self._kept: list[bytes] = []
        self._size = 0
        self.replayable = True
        # The client's body has ended: an attempt can be given all of it from what is kept.
        self.complete = False

    def attempt(self) -> BodyStream:
        """A fresh iterator over the whole body; only valid while `replayable`."""
        return _Attempt(self)

    async def _pull(self) -> bytes:
        if self.complete:
            raise StopAsyncIteration
        try:
            chunk = await self._source.__anext__()
        except StopAsyncIteration:
            self.complete = True
            raise
        if self.replayable:
            self._size += len(chunk)
            if self._size > self._limit:
                self.replayable = False
                self._kept.clear()
            else:
                self._kept.append(chunk)
        return chunk


class _Attempt:
    __slots__ = ("_body", "_position")

    def __init__(self, body: ReplayableBody) -> None:
        self._body = body
        self._position = 0

    def __aiter__(self) -> _Attempt:
        return self

    async def __anext__(self) -> bytes:
        body = self._body
        kept = body._kept  # the two classes are one mechanism
        if self._position < len(kept):
            chunk = kept[self._position]
            self._position += 1
            return chunk
        chunk = await body._pull()
        # Past the chunk just kept (or nothing is kept any more).
        self._position = len(kept)
        return chunk
