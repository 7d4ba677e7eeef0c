"""HARDENING.md §B: header rules at the edge, in both directions, with raw bytes.

What the upstream received is read from the recording upstream's log (names, values and
order as they crossed the wire); what the client received from the raw bytes.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from gateway.config.model import RateLimitConfig, RouteConfig, RouteMatch
from gateway.ratelimit.rate import parse_rate
from tests.recording_upstream import RecordedRequest, RecordingUpstream
from tests.security.conftest import Launch
from tests.security.wire import converse, request
from tests.upstream_servers import RawConnection, RawUpstream

HOST = b"Host: a"
CLOSE = b"Connection: close"
HOP_BY_HOP = (
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
)


def names(fields: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]]) -> set[bytes]:
    return {name.lower() for name, _ in fields}


def values(fields: tuple[tuple[bytes, bytes], ...], name: bytes) -> list[bytes]:
    return [value.strip() for key, value in fields if key.lower() == name]


async def forward_one(port: int, upstream: RecordingUpstream, *fields: bytes) -> RecordedRequest:
    talk = await converse(port, request(b"GET /h HTTP/1.1", HOST, CLOSE, *fields))
    assert talk.statuses == [200]
    assert len(upstream.requests) == 1
    return upstream.requests.pop()


async def test_hop_by_hop_fields_and_those_connection_names_never_reach_the_upstream(
    recording: RecordingUpstream, launch: Launch
) -> None:
    gateway = await launch(recording.port)
    seen = await forward_one(
        gateway.address[1],
        recording,
        b"Connection: X-Named, x-other",
        b"Connection: X-Third",
        b"X-Named: 1",
        b"X-Other: 2",
        b"X-Third: 3",
        b"Keep-Alive: timeout=5",
        b"Proxy-Connection: keep-alive",
        b"TE: trailers",
        b"Trailer: X-T",
        b"Upgrade: h2c",
        b"Proxy-Authorization: Basic c2VjcmV0",
        b"X-End-To-End: kept",
    )
    sent = names(seen.headers)
    assert sent.isdisjoint({*HOP_BY_HOP, b"x-named", b"x-other", b"x-third"})
    assert values(seen.headers, b"x-end-to-end") == [b"kept"]


async def test_hop_by_hop_fields_from_the_upstream_never_reach_the_client(
    launch: Launch,
) -> None:
    async def hop(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            await conn.send(
                b"HTTP/1.1 200 OK\r\nConnection: X-Named\r\nX-Named: 1\r\nKeep-Alive: timeout=5\r\n"
                b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
                b"Proxy-Authenticate: Basic\r\nX-End-To-End: kept\r\nContent-Length: 2\r\n\r\nok"
            )

    async with RawUpstream(hop) as upstream:
        gateway = await launch(upstream.port)
        talk = await converse(gateway.address[1], request(b"GET / HTTP/1.1", HOST, CLOSE))
    [response] = talk.responses
    got = names(response.headers)
    assert got.isdisjoint({b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"})
    assert got.isdisjoint({b"proxy-authenticate", b"x-named", b"transfer-encoding"})
    # The gateway's own Connection: close is the only Connection field.
    assert response.header(b"connection") == [b"close"]
    assert response.header(b"x-end-to-end") == [b"kept"]
    assert response.body == b"ok"


async def test_a_client_cannot_remove_the_fields_the_gateway_adds(
    recording: RecordingUpstream, launch: Launch
) -> None:
    gateway = await launch(recording.port)
    talk = await converse(
        gateway.address[1],
        request(
            b"GET /h HTTP/1.1",
            HOST,
            b"Connection: close, X-Forwarded-For, X-Request-ID, Via, X-Forwarded-Proto",
            b"Connection: X-Forwarded-Host, traceparent",
            b"X-Request-ID: client-id-1",
        ),
    )
    [response] = talk.responses
    [seen] = recording.requests
    # Added after the hop-by-hop removal: the client's Connection cannot strip them.
    assert values(seen.headers, b"x-forwarded-for") == [b"127.0.0.1"]
    assert values(seen.headers, b"x-forwarded-proto") == [b"http"]
    assert values(seen.headers, b"x-forwarded-host") == [b"a"]
    assert values(seen.headers, b"via") == [b"1.1 gateway"]
    request_id = values(seen.headers, b"x-request-id")
    assert len(request_id) == 1
    assert response.header(b"x-request-id") == request_id
    assert response.header(b"via") == [b"1.1 gateway"]


async def test_an_upstream_cannot_remove_the_fields_the_gateway_adds(launch: Launch) -> None:
    async def strip(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            await conn.send(
                b"HTTP/1.1 200 OK\r\nConnection: X-Request-ID, Via, Date\r\n"
                b"X-Request-ID: upstream-id\r\nContent-Length: 2\r\n\r\nok"
            )

    async with RawUpstream(strip) as upstream:
        gateway = await launch(upstream.port)
        talk = await converse(
            gateway.address[1], request(b"GET / HTTP/1.1", HOST, CLOSE, b"X-Request-ID: mine-1")
        )
    [response] = talk.responses
    assert response.header(b"x-request-id") == [b"mine-1"]
    assert response.header(b"via") == [b"1.1 gateway"]
    assert len(response.header(b"date")) == 1


async def test_fields_with_underscores_are_dropped(
    recording: RecordingUpstream, launch: Launch
) -> None:
    # nginx's underscores_in_headers off: X_Forwarded_For would be read as X-Forwarded-For by
    # CGI-style upstreams (both become HTTP_X_FORWARDED_FOR) and spoof the client address.
    gateway = await launch(recording.port)
    seen = await forward_one(
        gateway.address[1],
        recording,
        b"X_Forwarded_For: 6.6.6.6",
        b"X_Real_IP: 6.6.6.6",
        b"x_custom: 1",
        b"X-Custom: 2",
    )
    sent = names(seen.headers)
    assert sent.isdisjoint({b"x_forwarded_for", b"x_real_ip", b"x_custom"})
    assert values(seen.headers, b"x-custom") == [b"2"]
    assert values(seen.headers, b"x-forwarded-for") == [b"127.0.0.1"]


@pytest.mark.parametrize(
    "field",
    [b"X-Bad: a\x00b", b"X-Bad: a\rb", b"X-Bad: a\r\n folded", b"X-Bad\x00: v", b"X-Bad: a\nb"],
    ids=["nul-value", "bare-cr", "obs-fold", "nul-name", "bare-lf"],
)
async def test_cr_lf_or_nul_from_an_upstream_is_never_written_out(
    launch: Launch, field: bytes
) -> None:
    async def bad(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\n" + field + b"\r\nContent-Length: 2\r\n\r\nok")

    async with RawUpstream(bad) as upstream:
        gateway = await launch(upstream.port)
        talk = await converse(gateway.address[1], request(b"GET / HTTP/1.1", HOST, CLOSE))
    assert talk.statuses == [502]
    assert b"\x00" not in talk.data
    assert b"X-Bad" not in talk.data
    head = talk.data.split(b"\r\n\r\n", 1)[0]
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert b"\r" not in head.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "field",
    [b"X-Bad: a\x00b", b"X-Bad: a\rb", b"X-Bad: a\r\n folded", b"X-Bad: a\nb"],
    ids=["nul-value", "bare-cr", "obs-fold", "bare-lf"],
)
async def test_cr_lf_or_nul_from_a_client_is_never_forwarded(
    recording: RecordingUpstream, launch: Launch, field: bytes
) -> None:
    gateway = await launch(recording.port)
    talk = await converse(gateway.address[1], request(b"GET / HTTP/1.1", HOST, field))
    assert talk.statuses == [400]
    assert talk.closed
    assert recording.requests == []


async def test_client_forwarding_fields_are_replaced_when_the_peer_is_not_trusted(
    recording: RecordingUpstream, launch: Launch
) -> None:
    gateway = await launch(recording.port)
    seen = await forward_one(
        gateway.address[1],
        recording,
        b"X-Forwarded-For: 6.6.6.6",
        b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: evil.example",
        b"X-Forwarded-Port: 443",
        b"Forwarded: for=6.6.6.6;proto=https",
        b"X-Real-IP: 6.6.6.6",
    )
    assert values(seen.headers, b"x-forwarded-for") == [b"127.0.0.1"]
    assert values(seen.headers, b"x-forwarded-proto") == [b"http"]
    assert values(seen.headers, b"x-forwarded-host") == [b"a"]
    assert names(seen.headers).isdisjoint({b"forwarded", b"x-real-ip"})
    assert b"6.6.6.6" not in b"".join(value for _, value in seen.headers)


async def test_trusted_proxies_keep_the_chain_and_the_client_is_the_first_untrusted_from_the_right(
    recording: RecordingUpstream, launch: Launch
) -> None:
    trusted = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))
    limit = RateLimitConfig(rate=parse_rate("1/minute"), burst=1)
    route = RouteConfig(name="limited", upstream="up", rate_limit=limit)
    gateway = await launch(recording.port, server={"trusted_proxies": trusted}, routes=[route])
    port = gateway.address[1]

    async def status(xff: bytes, source: str = "127.0.0.1") -> int:
        data = request(b"GET / HTTP/1.1", HOST, CLOSE, b"X-Forwarded-For: " + xff)
        talk = await converse(port, data, source=source)
        return talk.statuses[0]

    # Walking from the right: 10.1.2.3 is trusted, 203.0.113.7 is the client; whatever the
    # client wrote further left (6.6.6.6, then 7.7.7.7) does not make it another client.
    assert await status(b"6.6.6.6, 203.0.113.7, 10.1.2.3") == 200
    assert await status(b"7.7.7.7, 203.0.113.7, 10.1.2.3") == 429
    assert await status(b"203.0.113.8") == 200
    # The chain goes on with the peer appended.
    assert values(recording.requests[0].headers, b"x-forwarded-for") == [
        b"6.6.6.6, 203.0.113.7, 10.1.2.3, 127.0.0.1"
    ]
    # A peer outside trusted_proxies is the client, whatever its X-Forwarded-For says.
    assert await status(b"198.51.100.1", source="127.0.0.2") == 200
    assert await status(b"198.51.100.2", source="127.0.0.2") == 429
    assert values(recording.requests[-1].headers, b"x-forwarded-for") == [b"127.0.0.2"]


@pytest.mark.parametrize(
    "head",
    [
        request(b"GET / HTTP/1.1"),
        request(b"GET / HTTP/1.1", HOST, b"Host: b"),
        request(b"GET / HTTP/1.1", HOST, HOST),
        request(b"GET / HTTP/1.1", b"Host: a b"),
        request(b"GET / HTTP/1.1", b"Host: user@a"),
        request(b"GET / HTTP/1.1", b"Host: a/b"),
        request(b"GET / HTTP/1.1", b"Host: a:99999"),
        request(b"GET / HTTP/1.1", b"Host: a:b"),
        request(b"GET / HTTP/1.1", b"Host: [::1"),
        request(b"GET / HTTP/1.1", b"Host: a\x7f"),
        request(b"GET http://a b/ HTTP/1.1", HOST),
    ],
    ids=[
        "no-host",
        "two-hosts",
        "two-equal-hosts",
        "space",
        "userinfo",
        "slash",
        "port-out-of-range",
        "port-not-digits",
        "unclosed-ipv6",
        "control-character",
        "absolute-form-space",
    ],
)
async def test_missing_repeated_or_malformed_host_is_400(
    recording: RecordingUpstream, launch: Launch, head: bytes
) -> None:
    gateway = await launch(recording.port)
    talk = await converse(gateway.address[1], head)
    assert talk.statuses == [400]
    assert talk.responses[0].closes
    assert talk.closed
    assert recording.requests == []


async def test_an_unknown_host_is_never_a_forward_proxy_target(
    recording: RecordingUpstream, launch: Launch
) -> None:
    # A listener standing for "some other host": nothing may connect to it.
    connected: list[object] = []

    def trap_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.append(writer)
        writer.close()

    trap = await asyncio.start_server(trap_connection, "127.0.0.1", 0)
    try:
        other = b"127.0.0.1:%d" % trap.sockets[0].getsockname()[1]
        hosted = RouteConfig(name="a", upstream="up", match=RouteMatch(host="a"))
        gateway = await launch(recording.port, routes=[hosted])
        port = gateway.address[1]
        for data in (
            request(b"GET http://" + other + b"/x HTTP/1.1", HOST, CLOSE),
            request(b"GET /x HTTP/1.1", b"Host: " + other, CLOSE),
            request(b"CONNECT " + other + b" HTTP/1.1", b"Host: " + other),
            # llhttp takes an origin-form CONNECT; the gateway refuses CONNECT whatever the form.
            request(b"CONNECT / HTTP/1.1", HOST),
        ):
            talk = await converse(port, data)
            assert talk.statuses[0] in (400, 404)
            assert talk.closed
        # A catch-all route sends an absolute-form request to its own upstream, never to the
        # host it names (RFC 9112 §3.2.2: the authority replaces Host, for routing only).
        gateway = await launch(recording.port)
        talk = await converse(
            gateway.address[1], request(b"GET http://" + other + b"/x HTTP/1.1", HOST, CLOSE)
        )
        assert talk.statuses == [200]
        assert [r.target for r in recording.requests] == [b"/x"]
        assert connected == []
    finally:
        trap.close()
        await trap.wait_closed()
