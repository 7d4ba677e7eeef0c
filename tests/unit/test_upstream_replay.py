"""ReplayableBody: each attempt sees the whole body while it is small enough to keep."""

from __future__ import annotations

from collections.abc import AsyncIterator

from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.replay import ReplayableBody


class Source:
    """A client body that counts how many chunks were pulled from it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)
        self.pulled = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        for chunk in self._chunks:
            self.pulled += 1
            return chunk
        raise StopAsyncIteration


async def read(stream: AsyncIterator[bytes], count: int | None = None) -> bytes:
    out = b""
    async for chunk in stream:
        out += chunk
        if count is not None:
            count -= 1
            if not count:
                break
    return out


async def test_a_second_attempt_gets_the_whole_body_without_pulling_it_again() -> None:
    source = Source([b"ab", b"cd", b"ef"])
    body = ReplayableBody(source, limit=10)
    assert await read(body.attempt()) == b"abcdef"
    assert body.complete
    assert body.replayable
    assert await read(body.attempt()) == b"abcdef"
    assert source.pulled == 3


async def test_an_attempt_cut_short_is_continued_by_the_next_from_the_client() -> None:
    source = Source([b"ab", b"cd", b"ef"])
    body = ReplayableBody(source, limit=10)
    assert await read(body.attempt(), count=1) == b"ab"
    assert not body.complete
    assert await read(body.attempt()) == b"abcdef"
    assert source.pulled == 3


async def test_a_body_over_the_limit_is_not_kept() -> None:
    source = Source([b"abcd", b"efgh", b"ij"])
    body = ReplayableBody(source, limit=6)
    assert await read(body.attempt()) == b"abcdefghij"
    assert not body.replayable


@given(st.lists(st.binary(min_size=1, max_size=8), max_size=8), st.integers(0, 40))
async def test_the_first_attempt_always_reads_the_body_as_sent(
    chunks: list[bytes], limit: int
) -> None:
    body = ReplayableBody(Source(chunks), limit)
    assert await read(body.attempt()) == b"".join(chunks)
    assert body.replayable == (sum(map(len, chunks)) <= limit)
    if body.replayable:
        assert await read(body.attempt()) == b"".join(chunks)
