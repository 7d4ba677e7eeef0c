"""The streaming encoders (gateway.compression.codecs), decoded by the real decoders."""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from collections.abc import AsyncIterator

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.compression.codecs import (
    ALGORITHMS,
    DEFAULT_LEVELS,
    OFFLOAD_SIZE,
    EncodedBody,
    encoder,
)
from gateway.upstream.response import ResponseBody


def decode(algorithm: str, data: bytes) -> bytes:
    if algorithm == "gzip":
        return gzip.decompress(data)
    if algorithm == "br":
        return bytes(brotli.decompress(data))
    # No content size in a streamed frame: decode as a stream.
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


class Partial:
    """A streaming decoder: what the client can read from the bytes it has so far."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        if algorithm == "gzip":
            self._zlib = zlib.decompressobj(16 + 15)
        elif algorithm == "br":
            self._brotli = brotli.Decompressor()
        else:
            self._zstd = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> bytes:
        if self.algorithm == "gzip":
            return self._zlib.decompress(data)
        if self.algorithm == "br":
            return bytes(self._brotli.process(data))
        return self._zstd.decompress(data)


async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def encode_all(algorithm: str, parts: list[bytes], *, flush: bool = False) -> list[bytes]:
    counted: list[tuple[int, int]] = []
    body = EncodedBody(
        chunks(parts),
        encoder(algorithm, DEFAULT_LEVELS[algorithm]),
        flush=flush,
        on_bytes=lambda raw, out: counted.append((raw, out)),
    )
    out = [piece async for piece in body]
    assert sum(raw for raw, _ in counted) == sum(map(len, parts))
    assert sum(encoded for _, encoded in counted) == sum(map(len, out))
    return out


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_round_trip(algorithm: str) -> None:
    parts = [b'{"id": %d, "name": "item"}\n' % i * 20 for i in range(50)]
    encoded = b"".join(await encode_all(algorithm, parts))
    assert decode(algorithm, encoded) == b"".join(parts)
    assert len(encoded) < len(b"".join(parts)) / 5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_an_empty_body_is_a_valid_stream(algorithm: str) -> None:
    assert decode(algorithm, b"".join(await encode_all(algorithm, []))) == b""


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_flushed_chunks_decode_as_they_arrive(algorithm: str) -> None:
    # Server-sent events: each upstream chunk must be readable by the client on its own.
    events = [b"data: event %d\n\n" % i for i in range(5)]
    pieces = await encode_all(algorithm, events, flush=True)
    decoder = Partial(algorithm)
    for index, event in enumerate(events):
        assert decoder.feed(pieces[index]) == event


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_large_chunks_are_encoded_off_the_loop_and_still_round_trip(algorithm: str) -> None:
    parts = [os.urandom(1000) * (OFFLOAD_SIZE // 1000 + 1), b"tail"]
    encoded = b"".join(await encode_all(algorithm, parts))
    assert decode(algorithm, encoded) == b"".join(parts)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(ALGORITHMS), st.lists(st.binary(max_size=3000), max_size=8), st.booleans())
def test_any_chunks_round_trip(algorithm: str, parts: list[bytes], flush: bool) -> None:
    encoded = b"".join(asyncio.run(encode_all(algorithm, parts, flush=flush)))
    assert decode(algorithm, encoded) == b"".join(parts)


class HeldChunks:
    """A BodySource whose first ``at_hand`` chunks have arrived; the rest are still to come.

    With ``at_hand`` equal to the number of chunks, the whole body has arrived.
    """

    peak_buffered = 0

    def __init__(self, parts: list[bytes], at_hand: int) -> None:
        self.parts = list(parts)
        self.at_hand = at_hand
        self.reads = 0

    async def read_chunk(self, body: ResponseBody) -> bytes:
        self.reads += 1
        if not self.parts:
            body.detach(ended=True)
            raise StopAsyncIteration
        self.at_hand = max(self.at_hand - 1, 0)
        return self.parts.pop(0)

    def chunk_ready(self) -> bool:
        return self.at_hand > 0 or (not self.parts and self.at_hand >= 0)

    def take_complete(self, body: ResponseBody) -> bytes | None:
        if self.at_hand < len(self.parts):
            return None
        whole, self.parts = b"".join(self.parts), []
        body.detach(ended=True)
        return whole

    async def release(self, body: ResponseBody) -> None:
        body.detach(ended=not self.parts)


def encoded_body(parts: list[bytes], at_hand: int, *, flush: bool = False) -> EncodedBody:
    source = HeldChunks(parts, at_hand)
    return EncodedBody(
        ResponseBody(source), encoder("gzip", 6), flush=flush, on_bytes=lambda raw, out: None
    )


async def test_a_body_that_arrived_whole_is_encoded_whole_at_once() -> None:
    parts = [b'{"id": %d}' % i * 50 for i in range(4)]
    body = encoded_body(parts, at_hand=4)
    whole = body.take_complete()
    assert whole is not None
    assert gzip.decompress(whole) == b"".join(parts)
    assert [piece async for piece in body] == []


async def test_a_large_whole_body_is_left_to_iteration_off_the_loop() -> None:
    data = os.urandom(500) * (OFFLOAD_SIZE // 500 + 1)
    body = encoded_body([data], at_hand=1)
    assert body.take_complete() is None
    pieces = [piece async for piece in body]
    assert len(pieces) == 1
    assert gzip.decompress(pieces[0]) == data


async def test_a_body_still_arriving_is_not_taken_whole() -> None:
    parts = [b"a" * 100, b"b" * 100]
    body = encoded_body(parts, at_hand=1)
    assert body.take_complete() is None
    assert gzip.decompress(b"".join([piece async for piece in body])) == b"".join(parts)


async def test_chunks_at_hand_are_sent_together_unless_flushed() -> None:
    parts = [b'{"id": %d}' % i * 50 for i in range(4)]
    together = [piece async for piece in encoded_body(parts, at_hand=4)]
    # One send for all of it: no 10-byte gzip header on its own, no lone trailer.
    assert len(together) == 1
    assert gzip.decompress(together[0]) == b"".join(parts)
    flushed = [piece async for piece in encoded_body(parts, at_hand=4, flush=True)]
    assert len(flushed) == len(parts) + 1  # each chunk readable as it comes, then the trailer
    assert gzip.decompress(b"".join(flushed)) == b"".join(parts)


async def test_what_is_encoded_leaves_when_the_next_chunk_must_be_waited_for() -> None:
    parts = [os.urandom(20_000), os.urandom(20_000)]
    body = encoded_body(parts, at_hand=1)
    first = await body.__anext__()
    # Random bytes do not compress: the first chunk's output is there, and it is not held
    # back while the second chunk is awaited.
    assert len(first) > 10_000
    rest = b"".join([piece async for piece in body])
    assert gzip.decompress(first + rest) == b"".join(parts)
