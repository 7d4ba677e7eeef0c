"""The lean upstream transport against real sockets on loopback: framing, reuse, faults.

Upstreams are ``tests.upstream_servers`` servers writing exact bytes. No test asserts on
elapsed time; short configured timeouts only make the fault cases quick.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.errors import (
    BadGateway,
    GatewayTimeout,
    PayloadTooLarge,
    UpstreamAborted,
)
from gateway.messages import Headers
from gateway.upstream import UpstreamPool
from tests.upstream_servers import (
    AioUpstream,
    RawConnection,
    RawUpstream,
    RecordingConnection,
    chunks,
    collect,
    keep_alive,
    ok,
    record_connections,
    upstream_config,
)

AUTHORITY = b"client.example"


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[RecordingConnection]:
    return record_connections(monkeypatch)


async def get(pool: UpstreamPool, method: str = "GET", target: bytes = b"/") -> bytes:
    """One request without a body; returns the response body after releasing."""
    response = await pool.request(method, target, [], AUTHORITY, None, None)
    try:
        return await collect(response.body)
    finally:
        await response.release()


# --------------------------------------------------------------------- request bytes


@pytest.mark.parametrize(
    ("host_header", "expected_host"),
    [
        ("preserve", b"client.example"),
        ("target", None),
        ("fixed.example:8443", b"fixed.example:8443"),
    ],
)
async def test_request_head_is_built_byte_for_byte(
    host_header: str, expected_host: bytes | None
) -> None:
    async with RawUpstream(keep_alive(lambda r: ok())) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target(), host_header=host_header))
        fields: Headers = [(b"X-Trace", b"a  b"), (b"set-cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
        response = await pool.request("GET", b"/p%2Fq?x=1&y", fields, AUTHORITY, None, None)
        await response.release()
        await pool.close()
    host = expected_host or f"127.0.0.1:{upstream.port}".encode()
    assert upstream.connections[0].requests[0].head == (
        b"GET /p%2Fq?x=1&y HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"X-Trace: a  b\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
    )


async def test_content_length_body_is_sent_as_is() -> None:
    async with RawUpstream(keep_alive(lambda r: ok(r.body))) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("PUT", b"/x", [], AUTHORITY, chunks(b"hello ", b"world"), 11)
        assert await collect(response.body) == b"hello world"
        await response.release()
        await pool.close()
    request = upstream.connections[0].requests[0]
    assert request.head.endswith(b"\r\nContent-Length: 11\r\n\r\n")
    assert request.header(b"transfer-encoding") is None
    assert request.raw_body == b"hello world"


async def test_body_of_unknown_length_is_chunked_and_empty_chunks_are_skipped() -> None:
    async with RawUpstream(keep_alive(lambda r: ok(r.body))) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        body = chunks(b"ab", b"", b"0123456789abcdef")
        response = await pool.request("POST", b"/x", [], AUTHORITY, body, None)
        assert await collect(response.body) == b"ab0123456789abcdef"
        await response.release()
        await pool.close()
    request = upstream.connections[0].requests[0]
    assert request.head.endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert request.header(b"content-length") is None
    # RFC 9112 §7.1: hex size, CRLF, data, CRLF; "0" CRLF CRLF ends it.
    assert request.raw_body == b"2\r\nab\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"


async def test_post_without_body_says_content_length_zero() -> None:
    async with RawUpstream(keep_alive(lambda r: ok())) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        await get(pool, "POST")
        await get(pool, "GET")
        await pool.close()
    first, second = upstream.connections[0].requests
    assert first.head.endswith(b"\r\nContent-Length: 0\r\n\r\n")
    assert second.header(b"content-length") is None


async def test_body_longer_than_its_content_length_is_never_written() -> None:
    async with RawUpstream(keep_alive(lambda r: ok())) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        with pytest.raises(Exception, match="longer than its Content-Length"):
            await pool.request("POST", b"/", [], AUTHORITY, chunks(b"abc", b"GET / HTTP"), 3)
        await upstream.wait_closed_connections(1)
        await pool.close()
    # The upstream saw the 3 declared bytes and then a closed connection, no second request.
    assert [r.raw_body for r in upstream.connections[0].requests] == [b"abc"]


# ----------------------------------------------------------------------- keep-alive


async def test_three_hundred_sequential_requests_reuse_one_connection() -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"x" * 100)

    async with AioUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        for _ in range(300):
            assert await get(pool) == b"x" * 100
        await pool.close()
    assert pool.connections_opened == 1
    assert len(upstream.peers) == 300
    assert len(set(upstream.peers)) == 1


@pytest.mark.parametrize(
    ("response", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", True),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            False,
        ),
    ],
    ids=["1.1", "close", "1.0", "1.0-keep-alive", "chunked", "1.0-chunked"],
)
async def test_response_decides_reuse(response: bytes, reused: bool) -> None:
    async with RawUpstream(keep_alive(lambda r: response)) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        assert await get(pool) == b"ok"
        assert await get(pool) == b"ok"
        await pool.close()
    assert pool.connections_opened == (1 if reused else 2)


async def test_request_connection_close_prevents_reuse() -> None:
    async with RawUpstream(keep_alive(lambda r: ok())) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request(
            "GET", b"/", [(b"Connection", b"close")], AUTHORITY, None, None
        )
        await collect(response.body)
        await response.release()
        assert await get(pool) == b"ok"
        await pool.close()
    assert pool.connections_opened == 2


async def test_abandoned_response_closes_the_connection() -> None:
    big = b"y" * (4 * 1024 * 1024)
    async with RawUpstream(keep_alive(lambda r: ok(big))) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        assert response.body is not None
        first = await anext(response.body)
        assert first
        await response.release()
        await response.release()  # idempotent
        with pytest.raises(UpstreamAborted):
            await anext(response.body)
        await upstream.wait_closed_connections(1)
        assert await get(pool) == big
        await pool.close()
    assert pool.connections_opened == 2


async def test_release_after_the_body_was_read_does_not_touch_the_next_exchange() -> None:
    async with RawUpstream(keep_alive(lambda r: ok(r.target))) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        first = await pool.request("GET", b"/1", [], AUTHORITY, None, None)
        assert await collect(first.body) == b"/1"  # the connection went back to the pool
        second = await pool.request("GET", b"/2", [], AUTHORITY, None, None)
        await first.release()  # late release of the finished exchange: a no-op
        assert await collect(second.body) == b"/2"
        await second.release()
        await pool.close()
    assert pool.connections_opened == 1


# ------------------------------------------------------------------ response framing


async def test_chunked_response_is_decoded_and_trailers_do_not_leak() -> None:
    response_bytes = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with RawUpstream(keep_alive(lambda r: response_bytes)) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        assert response.content_length is None
        assert await collect(response.body) == b"hello world"
        assert response.headers == [(b"Transfer-Encoding", b"chunked")]
        await response.release()
        assert await get(pool) == b"hello world"
        await pool.close()
    assert pool.connections_opened == 1


async def test_content_length_response_reports_its_length() -> None:
    async with RawUpstream(keep_alive(lambda r: ok(b"abc", b"X-A: 1\r\n"))) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        assert (response.status, response.reason) == (200, b"OK")
        assert response.headers == [(b"Content-Length", b"3"), (b"X-A", b"1")]
        assert response.content_length == 3
        assert await collect(response.body) == b"abc"
        await response.release()
        await pool.close()


async def test_close_delimited_response_reads_to_eof_and_is_not_reused() -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        assert response.content_length is None
        assert await collect(response.body) == b"until the end"
        await response.release()
        assert await get(pool) == b"until the end"
        await pool.close()
    assert pool.connections_opened == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["204", "304", "length-0"],
)
async def test_responses_without_content_have_no_body_and_reuse(head: bytes) -> None:
    async with RawUpstream(keep_alive(lambda r: head)) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        for _ in range(3):
            response = await pool.request("GET", b"/", [], AUTHORITY, None, None)
            assert response.body is None
            await response.release()
        await pool.close()
    assert pool.connections_opened == 1


async def test_head_response_has_no_body_despite_content_length() -> None:
    def respond(request: object) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"

    async with RawUpstream(keep_alive(respond)) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        # Twice on one connection: a parser still waiting for 1234 body bytes would eat
        # the second head.
        for _ in range(2):
            response = await pool.request("HEAD", b"/", [], AUTHORITY, None, None)
            assert response.body is None
            assert response.content_length == 1234
            await response.release()
        await pool.close()
    assert pool.connections_opened == 1
    assert len(upstream.connections[0].requests) == 2


async def test_bytes_after_a_head_response_are_junk_and_end_the_connection() -> None:
    def respond(request: object) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

    async with RawUpstream(keep_alive(respond)) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("HEAD", b"/", [], AUTHORITY, None, None)
        assert response.body is None
        await response.release()
        # The junk body was never taken for the next response: GET reads a clean one.
        assert await get(pool) == b"hello"
        await pool.close()
    assert pool.connections_opened == 2


async def test_junk_after_a_complete_message_is_dropped_with_the_connection() -> None:
    async with RawUpstream(keep_alive(lambda r: ok(b"ok") + b"JUNK")) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        assert await get(pool) == b"ok"
        assert await get(pool) == b"ok"
        await pool.close()
    assert pool.connections_opened == 2


async def test_junk_on_an_idle_connection_drops_it_from_the_pool() -> None:
    send_junk = asyncio.Event()

    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(ok())
        await send_junk.wait()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged")
        await conn.wait_eof()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        assert await get(pool) == b"ok"
        assert pool.idle_connections == 1
        send_junk.set()
        await upstream.wait_closed_connections(1)
        assert pool.idle_connections == 0
        assert pool.open_connections == 0
        await pool.close()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX\x00Y: a\r\nContent-Length: 0\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n",
    ],
    ids=[
        "cl-te",
        "te-cl",
        "two-lengths",
        "negative-length",
        "length-list",
        "bad-status",
        "http2-text",
        "bare-lf",
        "obs-fold",
        "nul",
        "not-http",
        "unasked-101",
        "huge-head",
    ],
)
async def test_invalid_response_head_is_bad_gateway_and_closes(head: bytes) -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(head)
        await conn.wait_eof()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        with pytest.raises(BadGateway):
            await pool.request("GET", b"/", [], AUTHORITY, None, None)
        await upstream.wait_closed_connections(1)
        assert pool.open_connections == 0
        await pool.close()


# -------------------------------------------------------------------- interim (1xx)


async def test_interim_responses_are_relayed_in_order() -> None:
    def respond(request: object) -> bytes:
        return (
            b"HTTP/1.1 102 Processing\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + ok(b"final")
        )

    seen: list[tuple[int, bytes, Headers]] = []

    async def on_informational(status: int, reason: bytes, headers: Headers) -> None:
        seen.append((status, reason, headers))

    async with RawUpstream(keep_alive(respond)) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request(
            "GET", b"/", [], AUTHORITY, None, None, on_informational=on_informational
        )
        assert response.status == 200
        assert response.headers == [(b"Content-Length", b"5")]
        assert await collect(response.body) == b"final"
        await response.release()
        # Without a callback they are skipped.
        assert await get(pool) == b"final"
        await pool.close()
    assert seen == [
        (102, b"Processing", []),
        (103, b"Early Hints", [(b"Link", b"</a.css>; rel=preload")]),
    ]
    assert pool.connections_opened == 1


class PullRecorder:
    """A request body that records whether it was pulled."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            self.pulled += 1
            yield part


EXPECT: Headers = [(b"Expect", b"100-continue")]


async def test_expect_continue_holds_the_body_until_100() -> None:
    body = PullRecorder(b"payload")
    pulled_before_100: list[int] = []

    async def handler(conn: RawConnection) -> None:
        while (request := await conn.read_head()) is not None:
            if request.header(b"expect") is not None:
                pulled_before_100.append(body.pulled)
                await conn.send(b"HTTP/1.1 100 Continue\r\nX-I: 1\r\n\r\n")
            await conn.read_body(request)
            await conn.send(ok(request.body))

    seen: list[tuple[int, bytes, Headers]] = []

    async def on_informational(status: int, reason: bytes, headers: Headers) -> None:
        seen.append((status, reason, headers))

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request(
            "PUT",
            b"/",
            EXPECT,
            AUTHORITY,
            body.__aiter__(),
            7,
            expect_continue=True,
            on_informational=on_informational,
        )
        assert await collect(response.body) == b"payload"
        await response.release()
        assert await get(pool) == b""
        await pool.close()
    assert pulled_before_100 == [0]
    assert seen == [(100, b"Continue", [(b"X-I", b"1")])]
    assert pool.connections_opened == 1


async def test_expect_continue_final_response_first_never_sends_the_body() -> None:
    body = PullRecorder(b"payload")

    async def handler(conn: RawConnection) -> None:
        await conn.read_head()
        await conn.send(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
        await conn.wait_eof()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request(
            "PUT", b"/", EXPECT, AUTHORITY, body.__aiter__(), 7, expect_continue=True
        )
        assert response.status == 417
        assert response.body is None
        await response.release()
        # The upstream still expects 7 body bytes on that connection: it is not reused.
        await upstream.wait_closed_connections(1)
        await pool.close()
    assert body.pulled == 0


async def test_expect_continue_without_an_answer_sends_the_body_after_the_wait() -> None:
    body = PullRecorder(b"pay", b"load")

    async def handler(conn: RawConnection) -> None:
        request = await conn.read_request()  # never sends 100
        assert request is not None
        await conn.send(ok(request.body))
        await conn.wait_eof()

    seen: list[tuple[int, bytes, Headers]] = []

    async def on_informational(status: int, reason: bytes, headers: Headers) -> None:
        seen.append((status, reason, headers))

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()), expect_continue_timeout=0.05)
        response = await pool.request(
            "POST",
            b"/",
            EXPECT,
            AUTHORITY,
            body.__aiter__(),
            None,
            expect_continue=True,
            on_informational=on_informational,
        )
        assert await collect(response.body) == b"payload"
        await response.release()
        await pool.close()
    assert seen == [(100, b"Continue", [])]


# ------------------------------------------------------------- errors before the head


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_bad_gateway() -> None:
    from gateway.config.model import Target

    pool = UpstreamPool(upstream_config(Target("http", "127.0.0.1", closed_port())))
    with pytest.raises(BadGateway):
        await get(pool)
    assert pool.open_connections == 0
    await pool.close()


async def test_silent_upstream_is_gateway_timeout_and_the_connection_is_discarded() -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.wait_eof()  # never answers

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target(), response=0.1))
        with pytest.raises(GatewayTimeout):
            await get(pool)
        await upstream.wait_closed_connections(1)
        assert pool.open_connections == 0
        await pool.close()


async def test_reset_before_the_response_on_a_new_connection_is_not_retried() -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        conn.reset()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        with pytest.raises(BadGateway):
            await get(pool)
        await pool.close()
    assert upstream.accepted == 1


# --------------------------------------------------------------- errors in the body


async def test_stall_mid_body_aborts_the_body_after_the_read_timeout() -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await conn.wait_eof()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target(), read=0.1))
        response = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        assert response.body is not None
        assert await anext(response.body) == b"abc"
        with pytest.raises(UpstreamAborted):
            await anext(response.body)
        await response.release()
        await upstream.wait_closed_connections(1)
        await pool.close()


@pytest.mark.parametrize(
    ("partial", "reset"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", True),
    ],
    ids=["length-eof", "length-reset", "chunked-eof", "chunked-reset"],
)
async def test_truncated_body_raises_upstream_aborted(partial: bytes, reset: bool) -> None:
    sent = asyncio.Event()
    close = asyncio.Event()

    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(partial)
        sent.set()
        await close.wait()
        if reset:
            conn.reset()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        assert response.body is not None
        received: list[bytes] = []

        async def read_all() -> None:
            assert response.body is not None
            async for chunk in response.body:
                received.append(chunk)

        await sent.wait()
        close.set()
        with pytest.raises(UpstreamAborted):
            await read_all()
        assert b"".join(received) in (b"", b"abc")
        await response.release()
        assert pool.open_connections == 0
        await pool.close()


# ----------------------------------------------------- the caller's body iterator fails


async def test_request_body_error_before_the_head_is_reraised_from_request() -> None:
    error = PayloadTooLarge("request body too large")

    async def body() -> AsyncIterator[bytes]:
        yield b"some"
        raise error

    async def handler(conn: RawConnection) -> None:
        await conn.read_head()
        await conn.wait_eof()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        with pytest.raises(PayloadTooLarge) as raised:
            await pool.request("POST", b"/", [], AUTHORITY, body(), None)
        assert raised.value is error
        await upstream.wait_closed_connections(1)
        assert pool.open_connections == 0
        await pool.close()


async def test_request_body_error_after_the_head_is_raised_from_the_response_body() -> None:
    error = PayloadTooLarge("request body too large")
    fail = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"some"
        await fail.wait()
        raise error

    async def handler(conn: RawConnection) -> None:
        # Answers at once and streams while the request body is still coming (full duplex).
        await conn.read_head()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await conn.wait_eof()

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        response = await pool.request("POST", b"/", [], AUTHORITY, body(), None)
        assert response.body is not None
        assert await anext(response.body) == b"first"
        fail.set()
        with pytest.raises(PayloadTooLarge) as raised:
            await anext(response.body)
        assert raised.value is error
        await response.release()
        await upstream.wait_closed_connections(1)
        await pool.close()


# ------------------------------------------------------------- stale keep-alive retry


def answer_once_then(fault: str) -> RawUpstream:
    """Answers the first request on each connection (keep-alive), then on the next request
    head closes (``fin``) or resets (``rst``) without answering: the stale keep-alive race
    made deterministic."""

    async def handler(conn: RawConnection) -> None:
        request = await conn.read_request()
        assert request is not None
        await conn.send(ok(b"answer %d" % conn.index))
        if await conn.read_head() is None:
            return
        if fault == "rst":
            conn.reset()

    return RawUpstream(handler)


@pytest.mark.parametrize("fault", ["rst", "fin"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS"])
async def test_idempotent_request_is_retried_once_on_a_fresh_connection(
    method: str, fault: str
) -> None:
    async with answer_once_then(fault) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        assert await get(pool) == b"answer 0"
        response = await pool.request(method, b"/", [], AUTHORITY, None, None)
        assert response.status == 200
        if method != "HEAD":
            assert await collect(response.body) == b"answer 1"
        await response.release()
        await pool.close()
    assert pool.connections_opened == 2
    assert upstream.accepted == 2


@pytest.mark.parametrize("fault", ["rst", "fin"])
async def test_non_idempotent_request_is_not_retried(fault: str) -> None:
    async with answer_once_then(fault) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        assert await get(pool) == b"answer 0"
        with pytest.raises(BadGateway):
            await pool.request("POST", b"/", [], AUTHORITY, None, None)
        await pool.close()
    assert upstream.accepted == 1


async def test_request_whose_body_was_already_pulled_is_not_replayed() -> None:
    body = PullRecorder(b"data")
    async with answer_once_then("rst") as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        assert await get(pool) == b"answer 0"
        with pytest.raises(BadGateway):
            await pool.request("PUT", b"/", [], AUTHORITY, body.__aiter__(), 4)
        await pool.close()
    assert body.pulled == 1
    assert upstream.accepted == 1


async def test_a_connection_closed_while_idle_leaves_the_pool_at_once(
    connections: list[RecordingConnection],
) -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(ok(b"answer %d" % conn.index))  # keep-alive, then FIN

    async with RawUpstream(handler) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target()))
        assert await get(pool) == b"answer 0"
        assert pool.idle_connections == 1
        await connections[0].wait_closed()  # the upstream's FIN reached the idle connection
        assert pool.idle_connections == 0
        assert pool.open_connections == 0
        # Not even a non-idempotent request meets the dead connection.
        assert await get(pool, "POST") == b"answer 1"
        await pool.close()
