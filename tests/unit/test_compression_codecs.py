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
