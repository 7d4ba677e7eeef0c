"""Streaming encoders for br, zstd and gzip, and a body that encodes as it streams.

Each encoder takes the body chunk by chunk. `EncodedBody` encodes each upstream chunk as it
arrives; for streaming types (``text/event-stream``, or whenever the route asks) it also
flushes after every chunk, so what the upstream sent is decodable by the client at once
(an SSE event reaches the browser when it is produced, not when a compression block fills).
Chunks of `OFFLOAD_SIZE` or more are encoded in the default executor: brotli, zstd and zlib
release the GIL while they work, and the event loop keeps serving other connections. Memory
per response is the encoder's window plus one chunk in and one out: never the body.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol

import brotli
import zstandard

from gateway.config.model import CompressionLevels
from gateway.upstream.response import ResponseBody

# Encode chunks at least this large off the event loop (a 64 KiB chunk takes ~0.3-1 ms at the
# default levels on this machine; smaller ones cost less than the hop to a thread).
OFFLOAD_SIZE: Final = 64 * 1024
# Levels fit for dynamic content (docs/performance.md measures them).
_DEFAULTS: Final = CompressionLevels()
DEFAULT_LEVELS: Final = {"br": _DEFAULTS.br, "zstd": _DEFAULTS.zstd, "gzip": _DEFAULTS.gzip}
ALGORITHMS: Final = ("br", "zstd", "gzip")


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes:
        """Everything given so far, decodable by the client (the stream goes on)."""
        ...

    def finish(self) -> bytes:
        """The end of the stream."""
        ...


class GzipEncoder:
    __slots__ = ("_zlib",)

    def __init__(self, level: int) -> None:
        # wbits 16 + 15: the gzip container (RFC 1952) around deflate, the largest window.
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, 16 + 15)

    def compress(self, data: bytes) -> bytes:
        return self._zlib.compress(data)

    def flush(self) -> bytes:
        return self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._zlib.flush(zlib.Z_FINISH)


class BrotliEncoder:
    __slots__ = ("_brotli",)

    def __init__(self, level: int) -> None:
        self._brotli = brotli.Compressor(quality=level)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._brotli.process(data))

    def flush(self) -> bytes:
        return bytes(self._brotli.flush())

    def finish(self) -> bytes:
        return bytes(self._brotli.finish())


class ZstdEncoder:
    __slots__ = ("_zstd",)

    def __init__(self, level: int) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._zstd.compress(data)

    def flush(self) -> bytes:
        return self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


_ENCODERS: Final[dict[str, Callable[[int], Encoder]]] = {
    "gzip": GzipEncoder,
    "br": BrotliEncoder,
    "zstd": ZstdEncoder,
}


def encoder(algorithm: str, level: int) -> Encoder:
    return _ENCODERS[algorithm](level)


def _step(encoder: Encoder, data: bytes, flush: bool) -> bytes:
    out = encoder.compress(data)
    return out + encoder.flush() if flush else out


def _whole(encoder: Encoder, data: bytes) -> bytes:
    return encoder.compress(data) + encoder.finish()


class EncodedBody:
    """``body`` encoded with ``encoder`` as it streams; ``on_bytes(raw, encoded)`` is told the
    sizes of each step (for the metrics).

    Without ``flush``, the output of the chunks already at hand is sent together (as nginx's
    gzip buffers do): a response that arrived whole leaves in one piece, not as a 10-byte gzip
    header, a body and a trailer in three sends. With ``flush``, each upstream chunk is sent
    as soon as it is encoded.
    """

    __slots__ = ("_body", "_done", "_encoder", "_flush", "_on_bytes", "_pending")

    def __init__(
        self,
        body: AsyncIterator[bytes],
        encoder: Encoder,
        *,
        flush: bool,
        on_bytes: Callable[[int, int], None],
    ) -> None:
        self._body = body
        self._encoder = encoder
        self._flush = flush
        self._on_bytes = on_bytes
        self._done = False
        # A whole body taken by take_complete but too large to encode on the event loop.
        self._pending: bytes | None = None

    def __aiter__(self) -> EncodedBody:
        return self

    def ready(self) -> bool:
        """Whether the next step needs no waiting for the upstream."""
        body = self._body
        return (
            self._done
            or self._pending is not None
            or (isinstance(body, ResponseBody) and body.ready())
        )

    def take_complete(self) -> bytes | None:
        """The whole encoded body, when the upstream's arrived whole and is small enough to
        encode here; None otherwise (iterate instead)."""
        body = self._body
        if self._done or self._pending is not None or not isinstance(body, ResponseBody):
            return None
        data = body.take_complete()
        if data is None:
            return None
        if len(data) >= OFFLOAD_SIZE:
            self._pending = data
            return None
        self._done = True
        out = _whole(self._encoder, data)
        self._on_bytes(len(data), len(out))
        return out

    async def __anext__(self) -> bytes:
        if self._pending is not None:
            data, self._pending = self._pending, None
            self._done = True
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(None, _whole, self._encoder, data)
            self._on_bytes(len(data), len(out))
            return out
        parts: list[bytes] = []
        size = 0
        while not self._done:
            try:
                chunk = await self._body.__anext__()
            except StopAsyncIteration:
                self._done = True
                tail = self._encoder.finish()
                self._on_bytes(0, len(tail))
                if tail:
                    parts.append(tail)
                break
            if len(chunk) >= OFFLOAD_SIZE:
                loop = asyncio.get_running_loop()
                out = await loop.run_in_executor(None, _step, self._encoder, chunk, self._flush)
            else:
                out = _step(self._encoder, chunk, self._flush)
            self._on_bytes(len(chunk), len(out))
            if out:
                parts.append(out)
                size += len(out)
            if parts and (self._flush or size >= OFFLOAD_SIZE or not self.ready()):
                break
        if not parts:
            raise StopAsyncIteration
        return parts[0] if len(parts) == 1 else b"".join(parts)
