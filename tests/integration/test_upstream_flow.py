"""Bodies stream both ways with backpressure and are never buffered whole.

Bounds are asserted on counters the transport keeps (peak buffered bytes, pause counts,
write-buffer size at each pull), never on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.upstream import UpstreamPool
from gateway.upstream.connection import HIGH_WATER
from tests.upstream_servers import (
    AioUpstream,
    RawConnection,
    RawUpstream,
    RecordingConnection,
    keep_alive,
    ok,
    record_connections,
    upstream_config,
)

AUTHORITY = b"client.example"
MIB = 1024 * 1024
# The most one socket read delivers: 256 KiB for asyncio's selector transports and uvloop.
MAX_READ = 256 * 1024
# asyncio's default write-buffer high-water mark for transports.
WRITE_HIGH_WATER = 64 * 1024


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[RecordingConnection]:
    return record_connections(monkeypatch)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_response_body_buffer_stays_bounded_for_a_slow_consumer(chunked: bool) -> None:
    total = 64 * MIB
    piece = b"z" * MIB

    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        if chunked:
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(total // len(piece)):
                await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            await conn.send(b"0\r\n\r\n")
        else:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            for _ in range(total // len(piece)):
                await conn.send(piece)
        await conn.wait_eof()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        assert response.body is not None
        received = 0
        async for chunk in response.body:
            received += len(chunk)
            # A slow consumer: yield to the loop so the upstream runs ahead of us.
            for _ in range(4):
                await asyncio.sleep(0)
        assert received == total
        assert response.peak_buffered <= HIGH_WATER + MAX_READ
        await response.release()
        await pool.close()


async def test_response_reading_pauses_while_the_consumer_does_not_read(
    connections: list[RecordingConnection],
) -> None:
    total = 16 * MIB

    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // MIB):
            await conn.send(b"q" * MIB)
        await conn.wait_eof()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        (conn,) = connections
        await conn.reading_paused.wait()  # the consumer has read nothing yet
        # Reading is paused: however long we wait, nothing more is buffered.
        held = response.peak_buffered
        for _ in range(50):
            await asyncio.sleep(0)
        assert response.peak_buffered == held <= HIGH_WATER + MAX_READ
        assert response.body is not None
        received = 0
        async for chunk in response.body:
            received += len(chunk)
        assert received == total
        await response.release()
        await pool.close()


async def test_request_body_is_pulled_only_as_fast_as_the_socket_takes_it(
    connections: list[RecordingConnection],
) -> None:
    total = 32 * MIB
    piece = b"r" * (64 * 1024)
    start_reading = asyncio.Event()
    first_pull = asyncio.Event()
    buffered_at_pull: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        first_pull.set()  # connected: connections[0] exists
        for _ in range(total // len(piece)):
            # What the transport still holds when the next chunk is asked for.
            buffered_at_pull.append(connections[0].write_buffer_size)
            yield piece

    async def handler(conn: RawConnection) -> None:
        request = await conn.read_head()
        assert request is not None
        await start_reading.wait()  # let the client fill every buffer first
        await conn.read_body(request)
        await conn.send(ok(b"%d" % len(request.body)))
        await conn.wait_eof()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        request = asyncio.create_task(pool.request("PUT", b"/", [], AUTHORITY, body(), total))
        # Wait for the body task to fill the socket and the transport (the upstream is not
        # reading yet).
        await first_pull.wait()
        await connections[0].writing_paused.wait()
        pulled = len(buffered_at_pull)
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(buffered_at_pull) == pulled  # paused: the generator is not pulled
        assert pulled < total // len(piece)
        start_reading.set()
        response = await request
        assert response.body is not None
        assert b"".join([c async for c in response.body]) == b"%d" % total
        await response.release()
        await pool.close()
    # Each chunk was pulled only when the transport held no more than its high-water mark.
    assert max(buffered_at_pull) <= WRITE_HIGH_WATER


async def test_full_duplex_echo_streams_both_ways_at_once() -> None:
    total = 16 * MIB
    piece = b"e" * (256 * 1024)
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(total // len(piece)):
            pulled += len(piece)
            yield piece
            await asyncio.sleep(0)  # like a client body: chunks arrive across loop turns

    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        # Starts answering before the request body is in, and echoes it as it arrives.
        response = web.StreamResponse()
        await response.prepare(request)
        async for chunk in request.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response

    async with AioUpstream(echo) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("POST", b"/echo", [], AUTHORITY, body(), None)
        # The head came back while most of the request body was still unsent.
        assert pulled < total
        assert response.body is not None
        received = 0
        async for chunk in response.body:
            received += len(chunk)
            assert chunk == b"e" * len(chunk)
        assert received == total
        await response.release()
        await pool.close()
    assert pool.connections_opened == 1


async def test_length_framed_body_completes_at_its_last_byte() -> None:
    # The caller's iterator has not said "end" yet (a client whose body framing ends later),
    # but all declared bytes are out: the exchange is complete and the connection reusable.
    never = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"four"
        await never.wait()

    async with RawUpstream(keep_alive(lambda r: ok(r.body))) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("PUT", b"/", [], AUTHORITY, body(), 4)
        assert response.body is not None
        assert b"".join([c async for c in response.body]) == b"four"
        await response.release()
        second = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        await second.release()
        await pool.close()
    assert pool.connections_opened == 1
