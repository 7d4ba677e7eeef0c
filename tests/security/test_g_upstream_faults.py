"""HARDENING.md §G: upstream faults the rest of the suite left open, against a real gateway.

- pool exhausted: 503 ``upstream_busy`` after about the connect timeout, while another route of
  the same gateway, to another upstream, keeps answering through the wait;
- reset mid-body of a chunked or a close-delimited upstream body: the client's response is
  aborted (never the terminal ``0\\r\\n\\r\\n``), its connection closed;
- a true RST mid-body on a cached route stores nothing.

The fault upstream is `tests.upstream_servers.RawUpstream`; the client is a raw socket
(`tests.security.wire`), so what is asserted is the exact bytes the gateway wrote.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.config.model import (
    CacheConfig,
    PoolConfig,
    RouteConfig,
    RouteMatch,
    UpstreamTimeouts,
)
from tests.harness import upstream_to
from tests.security.conftest import Launch
from tests.security.wire import (
    close_writer,
    open_raw,
    parse_responses,
    read_one,
    read_until_close,
    request,
)
from tests.upstream_servers import RawConnection, RawHandler, RawUpstream, keep_alive, ok

GET = request(b"GET /page HTTP/1.1", b"Host: a")
# What the upstream sends before it resets: whole chunks, then half of one more.
SENT_CHUNKS = (b"a" * 1000, b"b" * 2000, b"c" * 3000)
PARTIAL = b"d" * 2048


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The data of the whole chunks at the start of ``body``, and whether the terminal
    zero-size chunk (and the blank line after it) is among them."""
    data = bytearray()
    offset = 0
    while True:
        end = body.find(b"\r\n", offset)
        if end < 0:
            return bytes(data), False
        size = int(body[offset:end].split(b";")[0], 16)
        start = end + 2
        if size == 0:
            return bytes(data), body[start : start + 2] == b"\r\n"
        if len(body) < start + size + 2:
            return bytes(data), False
        assert body[start + size : start + size + 2] == b"\r\n", "a chunk without its CRLF"
        data += body[start : start + size]
        offset = start + size + 2


async def test_an_exhausted_pool_is_busy_after_the_connect_timeout_and_other_routes_answer(
    launch: Launch,
) -> None:
    connect = 0.3
    holding_it = asyncio.Event()
    release = asyncio.Event()

    async def holding(conn: RawConnection) -> None:
        # Takes the only connection of its pool and answers when the test says so.
        while await conn.read_request() is not None:
            holding_it.set()
            await release.wait()
            await conn.send(ok(b"held"))

    async with (
        RawUpstream(holding) as busy,
        RawUpstream(keep_alive(lambda _: ok(b"other"))) as other,
    ):
        gateway = await launch(
            upstreams=[
                upstream_to(
                    "busy",
                    busy.port,
                    pool=PoolConfig(max_connections=1, max_idle=1),
                    timeouts=UpstreamTimeouts(connect=connect, response=10.0, read=10.0),
                ),
                upstream_to("other", other.port),
            ],
            routes=[
                RouteConfig(name="busy", upstream="busy", match=RouteMatch(path_prefix="/busy")),
                RouteConfig(name="other", upstream="other"),
            ],
        )
        port = gateway.address[1]
        holder_reader, holder = await open_raw(port)
        waiter_reader, waiter = await open_raw(port)
        other_reader, other_writer = await open_raw(port)
        try:
            holder.write(request(b"GET /busy/hold HTTP/1.1", b"Host: a"))
            await holder.drain()
            await asyncio.wait_for(holding_it.wait(), 5)

            started = time.monotonic()
            waiter.write(request(b"GET /busy/wait HTTP/1.1", b"Host: a"))
            await waiter.drain()
            refused = asyncio.create_task(read_one(waiter_reader))
            # While that request waits for a slot, the other route answers, again and again.
            answered_during_the_wait = 0
            while not refused.done():
                other_writer.write(request(b"GET /elsewhere HTTP/1.1", b"Host: a"))
                await other_writer.drain()
                response = await read_one(other_reader)
                assert (response.status, response.body) == (200, b"other")
                if not refused.done():
                    answered_during_the_wait += 1
                await asyncio.sleep(0.02)
            busy_response = await refused
            waited = time.monotonic() - started

            assert busy_response.status == 503
            assert busy_response.json()["error"] == "upstream_busy"
            # It waited for a slot for the connect timeout, and not much longer.
            assert connect <= waited < connect * 6, waited
            assert answered_during_the_wait >= 3
            # The held request never lost its connection: it finishes once the upstream answers.
            assert busy.accepted == 1
            release.set()
            held = await read_one(holder_reader)
            assert (held.status, held.body) == (200, b"held")
        finally:
            release.set()
            for writer in (holder, waiter, other_writer):
                await close_writer(writer)


async def _chunked_then_reset(conn: RawConnection) -> None:
    await conn.read_request()
    await conn.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for chunk in SENT_CHUNKS:
        await conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    # Half of a fourth chunk, then RST.
    await conn.send(b"1000\r\n" + PARTIAL)
    await asyncio.sleep(0.05)
    conn.reset()


async def _close_delimited_then_reset(conn: RawConnection) -> None:
    await conn.read_request()
    # No Content-Length, no Transfer-Encoding: the body ends when the connection does
    # (RFC 9112 §6.3 rule 8); an RST is not that end.
    await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    for chunk in SENT_CHUNKS:
        await conn.send(chunk)
    await asyncio.sleep(0.05)
    conn.reset()


@pytest.mark.parametrize(
    "handler",
    [_chunked_then_reset, _close_delimited_then_reset],
    ids=["chunked", "close-delimited"],
)
async def test_a_reset_mid_body_never_gives_the_client_a_clean_end(
    launch: Launch, handler: RawHandler
) -> None:
    async with RawUpstream(handler) as upstream:
        gateway = await launch(upstream.port)
        reader, writer = await open_raw(gateway.address[1])
        try:
            writer.write(GET)
            await writer.drain()
            data, closed, _reset = await read_until_close(reader)
        finally:
            await close_writer(writer)
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, data[:300]
    assert head.startswith(b"HTTP/1.1 200 ")
    # To an HTTP/1.1 client the gateway frames a body of unknown length as chunked.
    assert b"\r\ntransfer-encoding: chunked" in head.lower()
    relayed, complete = dechunk(body)
    # No terminal chunk: the client can tell the body was cut short.
    assert not complete, body[-100:]
    assert not body.endswith(b"0\r\n\r\n")
    # What did arrive is a prefix of what the upstream sent, and the connection is gone.
    # (The chunked upstream's half chunk may be relayed too: its data streams as it comes.)
    assert (b"".join(SENT_CHUNKS) + PARTIAL).startswith(relayed)
    assert len(relayed) >= 1000
    assert closed


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_reset_mid_body_on_a_cached_route_stores_nothing(
    launch: Launch, framing: str
) -> None:
    async def cacheable_then_reset(conn: RawConnection) -> None:
        await conn.read_request()
        if framing == "chunked":
            framed = b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + b"x" * 1024 + b"\r\n"
        else:
            framed = b"Content-Length: 100000\r\n\r\n" + b"x" * 1024
        await conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=600\r\n"
            + framed
        )
        await asyncio.sleep(0.05)
        conn.reset()

    async with RawUpstream(cacheable_then_reset) as upstream:
        gateway = await launch(
            routes=[RouteConfig(name="cached", upstream="up", cache=CacheConfig())],
            upstreams=[upstream_to("up", upstream.port)],
        )
        for attempt in (1, 2):
            reader, writer = await open_raw(gateway.address[1])
            try:
                writer.write(GET)
                await writer.drain()
                data, closed, _reset = await read_until_close(reader)
            finally:
                await close_writer(writer)
            # The client's response is cut short (never a whole response) and its connection
            # is gone.
            with pytest.raises(AssertionError, match=r"cut short|not a well-formed"):
                parse_responses(data, closed=closed)
            assert data.startswith(b"HTTP/1.1 200 ")
            assert closed
            # Each request reached the upstream: nothing was answered from the cache.
            assert len(upstream.connections) == attempt
            assert all(len(conn.requests) == 1 for conn in upstream.connections)
    memory = gateway.caches.memory
    assert memory is not None
    assert memory.entries == 0
