"""End-to-end behaviour of the gateway: real gateway, real upstreams, real clients on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import RunningGateway, start
from gateway.config.model import (
    HeaderMatch,
    RouteConfig,
    RouteMatch,
    ServerConfig,
    ServerLimits,
    ServerTimeouts,
    UpstreamTimeouts,
)
from tests.harness import (
    LOCAL,
    echo_app,
    fields_of,
    gateway_config,
    keepalive_get,
    parse_raw_response,
    raw_exchange,
    serve_app,
    upstream_to,
)


async def launch(gateways: list[RunningGateway], *args: Any, **kwargs: Any) -> int:
    gateway = await start(gateway_config(*args, **kwargs))
    gateways.append(gateway)
    return gateway.address[1]


async def test_get_passes_through_with_gateway_fields(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    port = await launch(gateways, [upstream_to("echo", echo_port)])
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"http://{LOCAL}:{port}/hello?x=1",
            headers={"X-Forwarded-For": "6.6.6.6", "X-Custom": "kept", "X_Under": "dropped"},
        ) as response:
            assert response.status == 200
            payload = await response.json()
            request_id = response.headers["X-Request-ID"]
            assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            assert "X-Secret" not in response.headers
            assert "Keep-Alive" not in response.headers
            assert response.headers["Via"] == "1.1 gateway"
    assert payload["target"] == "/hello?x=1"
    assert fields_of(payload, "X-Custom") == ["kept"]
    assert fields_of(payload, "X_Under") == []
    # The client is not a trusted proxy: its X-Forwarded-For is replaced, not believed.
    assert fields_of(payload, "X-Forwarded-For") == ["127.0.0.1"]
    assert fields_of(payload, "X-Forwarded-Proto") == ["http"]
    assert fields_of(payload, "X-Forwarded-Host") == [f"{LOCAL}:{port}"]
    assert fields_of(payload, "Via") == ["1.1 gateway"]
    # A generated request ID goes upstream and comes back on the response.
    assert fields_of(payload, "X-Request-ID") == [request_id]
    assert len(request_id) == 32


async def test_request_id_kept_when_well_formed_and_replaced_when_not(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    port = await launch(gateways, [upstream_to("echo", echo_port)])
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"http://{LOCAL}:{port}/", headers={"X-Request-ID": "abc-123"}
        ) as response:
            assert response.headers["X-Request-ID"] == "abc-123"
            assert fields_of(await response.json(), "X-Request-ID") == ["abc-123"]
        async with client.get(
            f"http://{LOCAL}:{port}/", headers={"X-Request-ID": "bad id with spaces"}
        ) as response:
            assert response.headers["X-Request-ID"] != "bad id with spaces"
            assert len(response.headers["X-Request-ID"]) == 32


async def test_trusted_proxy_chain_is_extended(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    import ipaddress

    server = ServerConfig(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    port = await launch(gateways, [upstream_to("echo", echo_port)], server=server)
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"http://{LOCAL}:{port}/",
            headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
        ) as response:
            payload = await response.json()
    assert fields_of(payload, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert fields_of(payload, "X-Forwarded-Proto") == ["https"]


async def test_hop_by_hop_and_connection_named_fields_are_removed_upstream(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    port = await launch(gateways, [upstream_to("echo", echo_port)])
    request = (
        b"GET /h HTTP/1.1\r\nHost: example.test\r\nConnection: close, X-Drop, X-Forwarded-For\r\n"
        b"X-Drop: 1\r\nKeep-Alive: 300\r\nProxy-Authorization: secret\r\nTE: trailers\r\n"
        b"Upgrade: h2c\r\nX-Keep: 2\r\n\r\n"
    )
    status, _, body = parse_raw_response(await raw_exchange(port, request))
    assert status == 200
    sent = {k.lower() for k, _ in json.loads(body)["headers"]}
    assert "x-keep" in sent
    for name in ("x-drop", "keep-alive", "proxy-authorization", "te", "upgrade"):
        assert name not in sent
    # The gateway's own fields are added after the removal: a client cannot strip them.
    assert "x-forwarded-for" in sent


async def test_raw_target_and_duplicate_fields_arrive_byte_for_byte(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    port = await launch(gateways, [upstream_to("echo", echo_port)])
    request = (
        b"GET /a%2Fb?q=%20x&y=%zz HTTP/1.1\r\nHost: h.test\r\nX-Dup: one\r\nX-Dup: two\r\n"
        b"Cookie: c=1\r\nCookie: d=2\r\nConnection: close\r\n\r\n"
    )
    status, _, body = parse_raw_response(await raw_exchange(port, request))
    payload = json.loads(body)
    assert status == 200
    assert payload["target"] == "/a%2Fb?q=%20x&y=%zz"
    assert fields_of(payload, "X-Dup") == ["one", "two"]
    assert fields_of(payload, "Cookie") == ["c=1", "d=2"]
    assert fields_of(payload, "Host") == ["h.test"]


async def test_absolute_form_routes_on_its_host_and_forwards_origin_form(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    async with serve_app(echo_app("other")) as other_port:
        routes = [
            RouteConfig(name="api", upstream="echo", match=RouteMatch(host="api.test")),
            RouteConfig(name="rest", upstream="other"),
        ]
        port = await launch(
            gateways,
            [upstream_to("echo", echo_port), upstream_to("other", other_port)],
            routes=routes,
        )
        request = (
            b"GET http://API.test:8080/p/q?r=1 HTTP/1.1\r\nHost: elsewhere.test\r\n"
            b"Connection: close\r\n\r\n"
        )
        status, _, body = parse_raw_response(await raw_exchange(port, request))
    payload = json.loads(body)
    assert status == 200
    assert payload["upstream"] == "echo"
    assert payload["target"] == "/p/q?r=1"
    # RFC 9112 §3.2.2: the absolute-form authority replaces the Host field.
    assert fields_of(payload, "Host") == ["API.test:8080"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("preserve", "client.test"), ("target", None), ("fixed.internal", "fixed.internal")],
)
async def test_host_header_modes(
    echo_port: int, gateways: list[RunningGateway], mode: str, expected: str | None
) -> None:
    port = await launch(gateways, [upstream_to("echo", echo_port, host_header=mode)])
    request = b"GET / HTTP/1.1\r\nHost: client.test\r\nConnection: close\r\n\r\n"
    _, _, body = parse_raw_response(await raw_exchange(port, request))
    want = expected if expected is not None else f"{LOCAL}:{echo_port}"
    assert fields_of(json.loads(body), "Host") == [want]


async def test_routing_precedence_strip_prefix_and_404(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    async with serve_app(echo_app("users")) as users_port:
        routes = [
            RouteConfig(name="catch-all", upstream="echo"),
            RouteConfig(
                name="users",
                upstream="users",
                match=RouteMatch(path_prefix="/users", methods=frozenset({"GET"})),
                strip_prefix=True,
            ),
            RouteConfig(
                name="canary",
                upstream="users",
                match=RouteMatch(host="*.example.test", headers=(HeaderMatch("x-canary", "1"),)),
            ),
        ]
        port = await launch(
            gateways,
            [upstream_to("echo", echo_port), upstream_to("users", users_port)],
            routes=routes,
        )
        base = f"http://{LOCAL}:{port}"
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{base}/users/7?x=1") as response:
                payload = await response.json()
                assert payload["upstream"] == "users"
                assert payload["target"] == "/7?x=1"
            async with client.get(f"{base}/usersx") as response:
                assert (await response.json())["upstream"] == "echo"
            async with client.post(f"{base}/users/7") as response:
                assert (await response.json())["upstream"] == "echo"
            async with client.get(
                f"{base}/any", headers={"Host": "a.example.test", "X-Canary": "1"}
            ) as response:
                assert (await response.json())["upstream"] == "users"
    only_host = [RouteConfig(name="h", upstream="echo", match=RouteMatch(host="only.test"))]
    port = await launch(gateways, [upstream_to("echo", echo_port)], routes=only_host)
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"http://{LOCAL}:{port}/", headers={"X-Request-ID": "r-404"}
        ) as response:
            assert response.status == 404
            assert await response.json() == {
                "error": "route_not_found",
                "message": "no route matches this request",
                "request_id": "r-404",
            }


async def test_bodies_head_204_304_and_streaming(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    port = await launch(gateways, [upstream_to("echo", echo_port)])
    base = f"http://{LOCAL}:{port}"
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{base}/p", data=b"x" * 100_000) as response:
            assert (await response.json())["body"] == "x" * 100_000

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 1000

        async with client.put(f"{base}/c", data=chunks()) as response:
            payload = await response.json()
            assert payload["body"] == "y" * 10_000
            assert fields_of(payload, "Transfer-Encoding") == ["chunked"]
        async with client.head(f"{base}/h") as response:
            assert response.status == 200
            assert int(response.headers["Content-Length"]) > 0
            assert await response.read() == b""
        async with client.get(f"{base}/204") as response:
            assert response.status == 204
            assert await response.read() == b""
        async with client.get(f"{base}/304") as response:
            assert response.status == 304
            assert response.headers["ETag"] == '"v1"'
        async with client.get(f"{base}/stream") as response:
            assert await response.read() == b"part0;part1;part2;"
            # Streamed (no length known): chunked framing to the client.
            assert response.headers["Transfer-Encoding"] == "chunked"


async def test_expect_100_continue_is_relayed(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    port = await launch(gateways, [upstream_to("echo", echo_port)])
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(
        b"POST /e HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    await writer.drain()
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    status, _, body = parse_raw_response(rest)
    assert status == 200
    assert json.loads(body)["body"] == "hello"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Hosts
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),  # malformed Host
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-F: 1\r\n" * 150 + b"\r\n", 431),
    ],
)
async def test_edge_rejects_with_json_and_closes(
    echo_port: int, gateways: list[RunningGateway], request_bytes: bytes, status: int
) -> None:
    port = await launch(gateways, [upstream_to("echo", echo_port)])
    got, fields, body = parse_raw_response(await raw_exchange(port, request_bytes))
    assert got == status
    assert fields["content-type"] == ["application/json; charset=utf-8"] or fields[
        "content-type"
    ] == ["application/json"]
    error = json.loads(body)
    assert set(error) == {"error", "message", "request_id"}
    assert error["request_id"]
    assert fields["connection"] == ["close"]


async def test_header_block_limit_and_chunked_body_limit(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    server = ServerConfig(limits=ServerLimits(max_body=1000, max_header_bytes=2000))
    port = await launch(gateways, [upstream_to("echo", echo_port)], server=server)
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(30))
    status, _, _ = parse_raw_response(
        await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
    )
    assert status == 431
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"400\r\n" + b"z" * 1024 + b"\r\n0\r\n\r\n"
    status, _, body = parse_raw_response(await raw_exchange(port, chunked))
    assert status == 413
    assert json.loads(body)["error"] == "body_too_large"


async def test_header_read_deadline_answers_408(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    server = ServerConfig(timeouts=ServerTimeouts(header_read=0.3))
    port = await launch(gateways, [upstream_to("echo", echo_port)], server=server)
    # A slowloris head that never completes, and a socket that sends nothing at all.
    for partial in (b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ", b""):
        status, fields, body = parse_raw_response(await raw_exchange(port, partial, read_timeout=5))
        assert status == 408
        assert fields["connection"] == ["close"]
        assert json.loads(body)["error"] == "request_timeout"


async def test_keepalive_requests_reuse_a_handful_of_upstream_connections(
    gateways: list[RunningGateway],
) -> None:
    peers: set[tuple[str, int]] = set()

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        assert peer is not None
        peers.add((peer[0], peer[1]))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    async with serve_app(app) as upstream_port:
        port = await launch(gateways, [upstream_to("u", upstream_port)])
        connector = aiohttp.TCPConnector(limit=4)
        async with aiohttp.ClientSession(connector=connector) as client:

            async def one(index: int) -> None:
                async with client.get(f"http://{LOCAL}:{port}/{index}") as response:
                    assert response.status == 200
                    await response.read()

            for batch in range(75):
                await asyncio.gather(*(one(batch * 4 + i) for i in range(4)))
    assert len(peers) <= 8


async def test_upstream_failures_map_to_502_503_504(
    gateways: list[RunningGateway], echo_port: int
) -> None:
    import socket

    closed = socket.socket()
    closed.bind((LOCAL, 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    fast = UpstreamTimeouts(connect=0.5, response=0.3, read=1.0)
    upstreams = [
        upstream_to("closed", closed_port),
        upstream_to("slow", echo_port, timeouts=fast),
    ]
    routes = [
        RouteConfig(name="closed", upstream="closed", match=RouteMatch(path_prefix="/closed")),
        RouteConfig(name="slow", upstream="slow"),
    ]
    port = await launch(gateways, upstreams, routes=routes)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://{LOCAL}:{port}/closed") as response:
            assert response.status == 502
            assert (await response.json())["error"] == "bad_gateway"
        async with client.get(f"http://{LOCAL}:{port}/slow") as response:
            assert response.status == 504
            assert (await response.json())["error"] == "gateway_timeout"

    # Pool of one connection, held by a slow request: the next waits `connect`, then 503.
    from gateway.config.model import PoolConfig

    busy = upstream_to(
        "busy",
        echo_port,
        pool=PoolConfig(max_connections=1, max_idle=1),
        timeouts=UpstreamTimeouts(connect=0.2, response=5.0),
    )
    port = await launch(gateways, [busy])
    async with aiohttp.ClientSession() as client:
        holder = asyncio.create_task(client.get(f"http://{LOCAL}:{port}/slow"))
        await asyncio.sleep(0.2)
        async with client.get(f"http://{LOCAL}:{port}/x") as response:
            assert response.status == 503
            assert (await response.json())["error"] == "upstream_busy"
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder


async def test_upstream_reset_mid_body_aborts_the_client(
    gateways: list[RunningGateway],
) -> None:
    async def truncating(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(truncating, LOCAL, 0)
    upstream_port = server.sockets[0].getsockname()[1]
    try:
        port = await launch(gateways, [upstream_to("t", upstream_port)])
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://{LOCAL}:{port}/") as response:
                assert response.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
    finally:
        server.close()
        await server.wait_closed()


async def test_max_requests_per_connection_closes_after_the_last(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    server = ServerConfig(limits=replace(ServerLimits(), max_requests_per_connection=3))
    port = await launch(gateways, [upstream_to("echo", echo_port)], server=server)
    one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    data = await raw_exchange(port, one * 5, read_timeout=5)
    # Three answers, the last with Connection: close, then the server closes.
    assert data.count(b"HTTP/1.1 200") == 3
    assert data.count(b"Connection: close") == 1


async def test_early_hints_reach_http11_clients_only(gateways: list[RunningGateway]) -> None:
    async def hinting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            )
            await writer.drain()

    server = await asyncio.start_server(hinting, LOCAL, 0)
    try:
        port = await launch(gateways, [upstream_to("h", server.sockets[0].getsockname()[1])])
        eleven = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        interim, _, final = eleven.partition(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n")
        assert b"Link: </a.css>; rel=preload" in interim
        assert final.startswith(b"HTTP/1.1 200 OK")
        assert final.endswith(b"ok")
        # RFC 9110 §15.2: never a 1xx to an HTTP/1.0 client.
        ten = await raw_exchange(port, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        # RFC 9112 §2.3: the status line names the highest version the server conforms to
        # (1.1, as nginx says to 1.0 clients too); 1.0 semantics decide the rest.
        assert ten.startswith(b"HTTP/1.1 200 OK")
        assert b"103" not in ten
    finally:
        server.close()
        await server.wait_closed()


async def test_malformed_chunked_body_is_400_and_closes(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    port = await launch(gateways, [upstream_to("echo", echo_port)])
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    # Let the request start streaming upstream before the framing breaks.
    await asyncio.sleep(0.2)
    writer.write(b"zz\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    status, fields, body = parse_raw_response(raw)
    assert status == 400
    assert fields["connection"] == ["close"]
    assert json.loads(body)["error"] == "bad_request"


async def test_idle_keepalive_connection_is_closed_after_the_timeout(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    server = ServerConfig(timeouts=ServerTimeouts(keepalive=0.3))
    port = await launch(gateways, [upstream_to("echo", echo_port)], server=server)
    reader, writer = await asyncio.open_connection(LOCAL, port)
    assert (await keepalive_get(reader, writer)).startswith(b"HTTP/1.1 200")
    # Kept alive after the response, then closed by the server once idle for `keepalive`.
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()


async def test_header_deadline_holds_for_every_request_of_a_keepalive_connection(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    server = ServerConfig(timeouts=ServerTimeouts(header_read=0.3))
    port = await launch(gateways, [upstream_to("echo", echo_port)], server=server)
    reader, writer = await asyncio.open_connection(LOCAL, port)
    # Prompt requests over several deadlines' worth of time are never cut off...
    for _ in range(8):
        assert (await keepalive_get(reader, writer)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.1)
    # ...while a later head that stalls gets its own deadline.
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    await writer.drain()
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    status, fields, _ = parse_raw_response(rest)
    assert status == 408
    assert fields["connection"] == ["close"]
