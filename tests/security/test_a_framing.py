"""HARDENING.md §A: framing and smuggling, against a real gateway and a recording upstream.

Every refused case is sent with a second, well-formed request right behind it
(``GET /smuggled``): if the gateway read the first request's framing differently from a strict
parser, that second request would reach the upstream. Each case asserts the status, that the
connection closed (read until EOF), and the exact number of requests the upstream completed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from gateway.config.model import (
    CacheConfig,
    RateLimitConfig,
    RouteConfig,
    WebSocketConfig,
)
from gateway.downstream.connection import FEED_SLICE, MAX_PIPELINED, ClientConnection
from gateway.ratelimit.rate import parse_rate
from tests.recording_upstream import RecordingUpstream
from tests.security.conftest import Launch
from tests.security.wire import (
    close_writer,
    converse,
    open_raw,
    parse_responses,
    read_one,
    read_until_close,
    request,
)
from tests.upstream_servers import RawConnection, RawUpstream

HOST = b"Host: a"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
CHUNKED = b"Transfer-Encoding: chunked"


@dataclass(frozen=True)
class Refused:
    id: str
    data: bytes
    status: int = 400


def post(*fields: bytes, body: bytes = b"") -> bytes:
    return request(b"POST /target HTTP/1.1", HOST, *fields, body=body)


def chunked_post(body: bytes) -> bytes:
    return post(CHUNKED, body=body)


REFUSED: tuple[Refused, ...] = (
    # Content-Length with Transfer-Encoding, either order (RFC 9112 §6.1: a server may reject
    # it, and an intermediary that forwards must drop CL; refusing is what the edge does).
    Refused("cl-then-te", post(b"Content-Length: 5", CHUNKED, body=b"0\r\n\r\n")),
    Refused("te-then-cl", post(CHUNKED, b"Content-Length: 5", body=b"0\r\n\r\n")),
    # Transfer-Encoding other than a final chunked (RFC 9112 §6.3: 400 and close).
    Refused("te-xchunked", post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n")),
    Refused("te-chunked-twice", post(b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n")),
    Refused("te-gzip", post(b"Transfer-Encoding: gzip", body=b"0\r\n\r\n")),
    Refused("te-chunked-then-gzip", post(b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n")),
    Refused("te-identity", post(b"Transfer-Encoding: identity", body=b"0\r\n\r\n")),
    Refused("te-empty", post(b"Transfer-Encoding:", body=b"0\r\n\r\n")),
    # A coding before chunked would reach the upstream undecoded (RFC 9112 §6.1: 501).
    Refused(
        "te-gzip-then-chunked", post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501
    ),
    Refused("te-vertical-tab", post(b"Transfer-Encoding:\x0bchunked", body=b"0\r\n\r\n")),
    Refused("te-tab-before-colon", post(b"Transfer-Encoding\t: chunked", body=b"0\r\n\r\n")),
    Refused("te-space-before-colon", post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n")),
    Refused("te-two-lines", post(CHUNKED, b"Transfer-Encoding: chunked", body=b"0\r\n\r\n")),
    Refused(
        "te-two-lines-identity",
        post(CHUNKED, b"Transfer-Encoding: identity", body=b"0\r\n\r\n"),
    ),
    # A folded (obs-fold) Transfer-Encoding line hidden behind another field.
    Refused("te-folded", post(b"X-A: 1", b" Transfer-Encoding: chunked", body=b"0\r\n\r\n")),
    # Content-Length: differing, repeated, listed, signed, hex, 20 digits, spaced.
    Refused("cl-two-differing", post(b"Content-Length: 4", b"Content-Length: 5", body=b"abcde")),
    Refused("cl-two-equal", post(b"Content-Length: 5", b"Content-Length: 5", body=b"abcde")),
    Refused("cl-list", post(b"Content-Length: 5, 5", body=b"abcde")),
    Refused("cl-plus", post(b"Content-Length: +5", body=b"abcde")),
    Refused("cl-minus", post(b"Content-Length: -5", body=b"abcde")),
    Refused("cl-hex", post(b"Content-Length: 0x5", body=b"abcde")),
    Refused("cl-20-digits", post(b"Content-Length: 99999999999999999999", body=b"abcde")),
    Refused("cl-space-inside", post(b"Content-Length: 1 2", body=b"abcde")),
    Refused("cl-space-before-colon", post(b"Content-Length : 5", body=b"abcde")),
    # Line structure: obs-fold (RFC 9112 §5.2), bare CR (§2.2), bare LF, NUL.
    Refused("obs-fold", request(b"GET / HTTP/1.1", HOST, b"X-A: 1", b"  folded")),
    Refused("bare-cr-in-field", request(b"GET / HTTP/1.1", HOST, b"X-A: 1\rX-B: 2")),
    Refused("bare-cr-in-target", request(b"GET /a\rb HTTP/1.1", HOST)),
    Refused("bare-lf-line-ends", b"GET / HTTP/1.1\nHost: a\n\n"),
    Refused("bare-lf-in-head", b"GET / HTTP/1.1\r\nHost: a\nX-B: 2\r\n\r\n"),
    Refused("nul-in-value", request(b"GET / HTTP/1.1", HOST, b"X-A: 1\x002")),
    Refused("nul-in-name", request(b"GET / HTTP/1.1", HOST, b"X\x00A: 1")),
    Refused("nul-in-target", request(b"GET /\x00 HTTP/1.1", HOST)),
    # Chunk sizes and extensions (RFC 9112 §7.1).
    Refused("chunk-size-negative", chunked_post(b"-1\r\nx\r\n0\r\n\r\n")),
    Refused("chunk-size-overflow", chunked_post(b"FFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n")),
    Refused("chunk-size-0x", chunked_post(b"0x1\r\nx\r\n0\r\n\r\n")),
    Refused("chunk-size-space", chunked_post(b"1 \r\nx\r\n0\r\n\r\n")),
    Refused("chunk-size-bare-lf", chunked_post(b"1\nx\r\n0\r\n\r\n")),
    Refused("chunk-data-overrun", chunked_post(b"1\r\nxx\r\n0\r\n\r\n")),
    Refused("chunk-extension-bare-cr", chunked_post(b"1;a=\rb\r\nx\r\n0\r\n\r\n")),
    Refused("chunk-extension-bare-lf", chunked_post(b"1;a\nx\r\n0\r\n\r\n")),
    # Extensions carry nothing to the upstream and no limit counts them but this one.
    Refused("chunk-extension-1mib", chunked_post(b"1;" + b"e" * (1 << 20) + b"\r\nx\r\n0\r\n\r\n")),
    # Trailers carrying framing or routing fields (RFC 9110 §6.5.1).
    Refused("trailer-content-length", chunked_post(b"1\r\nx\r\n0\r\nContent-Length: 5\r\n\r\n")),
    Refused("trailer-host", chunked_post(b"1\r\nx\r\n0\r\nHost: evil\r\n\r\n")),
    Refused("trailer-transfer-encoding", chunked_post(b"1\r\nx\r\n0\r\n" + CHUNKED + b"\r\n\r\n")),
    # HTTP/1.0 has no chunked framing (RFC 9112 §6.1).
    Refused("http10-chunked", request(b"POST / HTTP/1.0", HOST, CHUNKED, body=b"0\r\n\r\n")),
    # Versions the gateway does not speak.
    Refused("http09-request-line", b"GET /\r\n\r\n"),
    Refused("http09", request(b"GET / HTTP/0.9", HOST)),
    Refused("http20", request(b"GET / HTTP/2.0", HOST)),
    Refused("http110", request(b"GET / HTTP/1.10", HOST)),
    Refused("http12", request(b"GET / HTTP/1.2", HOST)),
    Refused("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    Refused("lower-case-version", request(b"GET / http/1.1", HOST)),
)


@pytest.mark.parametrize("case", REFUSED, ids=[case.id for case in REFUSED])
async def test_refused_framing_is_answered_closed_and_never_forwarded(
    recording: RecordingUpstream, launch: Launch, case: Refused
) -> None:
    gateway = await launch(recording.port)
    talk = await converse(gateway.address[1], case.data + SMUGGLED)
    assert talk.statuses == [case.status], talk.data[:300]
    assert talk.responses[0].closes
    assert talk.responses[0].json()["request_id"]
    assert talk.closed
    assert recording.requests == []


@dataclass(frozen=True)
class Accepted:
    """Valid, if unusual, framing: forwarded once, with this body, and the connection goes on."""

    id: str
    data: bytes
    body: bytes


ABC = b"3\r\nabc\r\n0\r\n\r\n"
ACCEPTED: tuple[Accepted, ...] = (
    # A tab is optional whitespace before a field value (RFC 9110 §5.6.3): still chunked.
    Accepted("te-tab-before-value", post(b"Transfer-Encoding:\tchunked", body=ABC), b"abc"),
    # Coding names are case-insensitive (RFC 9112 §7).
    Accepted("te-upper-case", post(b"Transfer-Encoding: CHUNKED", body=ABC), b"abc"),
    Accepted("te-trailing-space", post(b"Transfer-Encoding: chunked ", body=ABC), b"abc"),
    # Leading zeros: 20 digits, value 3 (1*DIGIT, RFC 9110 §8.6).
    Accepted(
        "cl-20-digits-leading-zeros",
        post(b"Content-Length: 00000000000000000003", body=b"abc"),
        b"abc",
    ),
    Accepted(
        "chunk-extensions",
        chunked_post(b'2;name=value;flag\r\nab\r\n1;q="x y"\r\nc\r\n0\r\n\r\n'),
        b"abc",
    ),
    # A trailer is dropped, never merged into the header section (RFC 9110 §6.5.1).
    Accepted("trailer-plain-field", chunked_post(b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"), b"abc"),
)


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.id for case in ACCEPTED])
async def test_unusual_but_valid_framing_is_forwarded_exactly_once(
    recording: RecordingUpstream, launch: Launch, case: Accepted
) -> None:
    gateway = await launch(recording.port)
    after = b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    talk = await converse(gateway.address[1], case.data + after)
    assert talk.statuses == [200, 200]
    assert talk.closed
    assert [(r.target, r.body) for r in recording.requests] == [
        (b"/target", case.body),
        (b"/after", b""),
    ]
    forwarded = {name.lower() for name, _ in recording.requests[0].headers}
    assert b"x-trailer" not in forwarded


async def test_1000_pipelined_requests_are_answered_in_order_with_a_bounded_queue(
    recording: RecordingUpstream, launch: Launch
) -> None:
    gateway = await launch(recording.port)
    count = 1000  # also max_requests_per_connection: the last answer closes
    requests = [
        b"GET /p/%d HTTP/1.1\r\nHost: a\r\nX-Request-ID: req-%d\r\n\r\n" % (i, i)
        for i in range(count)
    ]
    burst = b"".join(requests)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            for conn in gateway.server.connections:
                assert isinstance(conn, ClientConnection)
                peak = max(peak, len(conn._queue))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        talk = await converse(gateway.address[1], burst, idle=20)
    finally:
        watcher.cancel()
    assert len(talk.responses) == count
    assert [r.header(b"x-request-id") for r in talk.responses] == [
        [b"req-%d" % i] for i in range(count)
    ]
    assert talk.responses[-1].closes
    assert talk.closed
    assert [r.target for r in recording.requests] == [b"/p/%d" % i for i in range(count)]
    # Parsed heads wait in a queue of MAX_PIPELINED, plus what one slice of the input held;
    # the rest waits as bytes, or in the kernel's buffers, never as 1000 parsed requests.
    smallest = min(len(r) for r in requests)
    assert 0 < peak <= MAX_PIPELINED + 1 + FEED_SLICE // smallest


# --- requests answered early ---------------------------------------------------------------


def body_hiding(smuggled: bytes, size: int) -> bytes:
    """A body of ``size`` bytes that starts with a complete request."""
    return smuggled + b"x" * (size - len(smuggled))


async def test_413_for_a_declared_length_never_parses_the_body_as_a_request(
    recording: RecordingUpstream, launch: Launch
) -> None:
    gateway = await launch(recording.port, limits={"max_body": 1000})
    data = post(b"Content-Length: 2000", body=body_hiding(SMUGGLED, 2000))
    talk = await converse(gateway.address[1], data)
    assert talk.statuses == [413]
    assert talk.responses[0].closes
    assert talk.closed
    assert recording.requests == []


async def test_413_while_streaming_never_parses_the_rest_as_a_request(
    recording: RecordingUpstream, launch: Launch
) -> None:
    gateway = await launch(recording.port, limits={"max_body": 1000})
    chunk = b"%x\r\n%s\r\n" % (len(SMUGGLED), SMUGGLED)
    data = chunked_post(chunk * 60 + b"0\r\n\r\n") + SMUGGLED
    talk = await converse(gateway.address[1], data)
    assert talk.statuses == [413]
    assert talk.responses[0].closes
    assert talk.closed
    # The request started streaming upstream and was cut: the upstream completed nothing.
    assert recording.requests == []


async def test_429_leaves_the_body_unparsed(recording: RecordingUpstream, launch: Launch) -> None:
    limit = RateLimitConfig(rate=parse_rate("1/minute"), burst=1)
    route = RouteConfig(name="limited", upstream="up", rate_limit=limit)
    gateway = await launch(recording.port, routes=[route])
    port = gateway.address[1]
    first = await converse(port, request(b"GET /first HTTP/1.1", HOST, b"Connection: close"))
    assert first.statuses == [200]
    # A complete body is drained: the request after it is the client's next, and gets its own
    # answer; the request hidden in the body gets none.
    hidden = post(b"Content-Length: 200", body=body_hiding(SMUGGLED, 200))
    last = request(b"GET /last HTTP/1.1", HOST, b"Connection: close")
    talk = await converse(port, hidden + last)
    assert talk.statuses == [429, 429]
    assert talk.closed
    # A body still arriving is not waited for: answered, then the connection closes.
    partial = post(b"Content-Length: 200", body=body_hiding(SMUGGLED, 100))
    talk = await converse(port, partial)
    assert talk.statuses == [429]
    assert talk.responses[0].closes
    assert talk.closed
    assert [r.target for r in recording.requests] == [b"/first"]


async def test_a_cache_hit_never_parses_a_body_as_the_next_request(
    recording: RecordingUpstream, launch: Launch
) -> None:
    route = RouteConfig(name="cached", upstream="up", cache=CacheConfig())
    gateway = await launch(recording.port, routes=[route])
    port = gateway.address[1]
    get = request(b"GET /r/cl HTTP/1.1", HOST, b"Connection: close")
    for _ in range(2):
        assert (await converse(port, get)).statuses == [200]
    assert len(recording.requests) == 1  # the second was a hit
    # A GET with a body bypasses the cache: forwarded once, its body a body.
    length = b"Content-Length: 100"
    hidden = request(b"GET /r/cl HTTP/1.1", HOST, length, body=body_hiding(SMUGGLED, 100))
    talk = await converse(port, hidden + request(b"GET /r/cl HTTP/1.1", HOST, b"Connection: close"))
    assert talk.statuses == [200, 200]
    assert talk.closed
    assert [r.target for r in recording.requests] == [b"/r/cl", b"/r/cl"]
    assert recording.requests[1].body == body_hiding(SMUGGLED, 100)


# --- Upgrade --------------------------------------------------------------------------------

UPGRADE = request(
    b"GET /ws HTTP/1.1",
    HOST,
    b"Connection: Upgrade",
    b"Upgrade: websocket",
    b"Sec-WebSocket-Version: 13",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
)
# A masked WebSocket text frame ("hello"): tunnel bytes, if a tunnel had opened.
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"


async def test_an_upgrade_answered_without_101_opens_no_tunnel(
    recording: RecordingUpstream, launch: Launch
) -> None:
    gateway = await launch(recording.port)
    talk = await converse(gateway.address[1], UPGRADE + FRAME)
    # Answered as plain HTTP, then the frame bytes are parsed as HTTP: a bad request.
    assert talk.statuses == [200, 400]
    assert talk.closed
    assert [r.target for r in recording.requests] == [b"/ws"]
    assert b"upgrade" not in {name.lower() for name, _ in recording.requests[0].headers}
    assert recording.rejected == []  # the frame never reached the upstream


async def test_a_websocket_route_whose_upstream_refuses_opens_no_tunnel(launch: Launch) -> None:
    received: list[bytes] = []

    async def refusing(conn: RawConnection) -> None:
        # Answers the handshake with a plain 200, then records whatever else arrives.
        if await conn.read_request() is None:
            return
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
        while data := await conn.reader.read(65536):
            received.append(data)

    async with RawUpstream(refusing) as upstream:
        route = RouteConfig(name="ws", upstream="up", websocket=WebSocketConfig())
        gateway = await launch(upstream.port, routes=[route])
        talk = await converse(gateway.address[1], UPGRADE + FRAME)
        assert talk.statuses
        assert 101 not in talk.statuses
        assert talk.statuses[-1] >= 400
        assert talk.closed
        assert [r.target for c in upstream.connections for r in c.requests] == [b"/ws"]
        assert received == []  # the frame never reached the upstream


# --- what upstreams send back ---------------------------------------------------------------


async def test_an_upstream_response_with_both_lengths_is_not_relayed(launch: Launch) -> None:
    async def both(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            await conn.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"
            )

    async with RawUpstream(both) as upstream:
        gateway = await launch(upstream.port)
        talk = await converse(
            gateway.address[1], request(b"GET / HTTP/1.1", HOST, b"Connection: close")
        )
    assert talk.statuses == [502]
    assert talk.responses[0].json()["error"] == "bad_gateway"
    assert b"hello" not in talk.data
    assert talk.closed


async def test_junk_after_an_upstream_body_is_never_relayed(launch: Launch) -> None:
    async def junk(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            await conn.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
            )

    async with RawUpstream(junk) as upstream:
        gateway = await launch(upstream.port)
        reader, writer = await open_raw(gateway.address[1])
        try:
            for _ in range(2):
                writer.write(request(b"GET / HTTP/1.1", HOST))
                response = await read_one(reader)
                assert (response.status, response.body) == (200, b"ok")
        finally:
            await close_writer(writer)
        # The connection that sent junk was discarded, never reused for the second request.
        assert upstream.accepted == 2


async def test_a_pipelined_tail_after_the_last_allowed_request_is_not_answered(
    recording: RecordingUpstream, launch: Launch
) -> None:
    gateway = await launch(recording.port, limits={"max_requests_per_connection": 2})
    one = request(b"GET /n HTTP/1.1", HOST)
    reader, writer = await open_raw(gateway.address[1])
    try:
        writer.write(one * 5)
        data, closed, reset = await read_until_close(reader)
    finally:
        await close_writer(writer)
    responses = parse_responses(data, closed=closed)
    assert [r.status for r in responses] == [200, 200]
    assert responses[-1].closes
    # A FIN after the answers (the gateway lingers over the unread tail), not a reset.
    assert closed
    assert not reset
    assert len(recording.requests) == 2
