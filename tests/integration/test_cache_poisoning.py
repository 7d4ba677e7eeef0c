"""HARDENING.md §C, cache poisoning and deception, case by case against a real gateway.

Each test plays the attacker first and the victim second, and asserts what the victim gets:
a response stored from the attacker's request must never carry what the attacker controlled
beyond the key (method, scheme, host, port, path, query) and the Vary fields.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway.app import RunningGateway, start
from gateway.cache.keys import key_for_url
from gateway.config.model import CacheConfig, RouteConfig
from tests.harness import gateway_config, upstream_to
from tests.integration.cache_origin import Origin, fetch, respond


async def cached(gateways: list[RunningGateway], port: int) -> RunningGateway:
    route = RouteConfig(name="api", upstream="origin", cache=CacheConfig())
    gateway = await start(gateway_config([upstream_to("origin", port)], [route]))
    gateways.append(gateway)
    return gateway


def reflect(request: web.Request) -> web.Response:
    """What careless applications do: build the page from request fields."""
    seen = {
        "host": request.headers.get("X-Forwarded-Host", request.host),
        "proto": request.headers.get("X-Forwarded-Proto", "http"),
        "path": request.headers.get("X-Original-URL", request.path_qs),
        "method": request.headers.get("X-HTTP-Method-Override", request.method),
    }
    return web.json_response(seen, headers={"Cache-Control": "max-age=60"})


async def test_forwarded_fields_from_a_client_never_reach_a_stored_page(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/home"] = reflect
    gateway = await cached(gateways, port)
    await fetch(
        gateway,
        "/home",
        Host="shop.example.com",
        X_Forwarded_Host="evil.example.net",
        X_Forwarded_Proto="javascript",
    )
    _, _, body = await fetch(gateway, "/home", Host="shop.example.com")
    page = json.loads(body)
    # The client is not a trusted proxy: its X-Forwarded-* were replaced, not passed on.
    assert page["host"] == "shop.example.com"
    assert page["proto"] == "http"
    assert recorder.hits("/home") == 1


async def test_path_and_method_overrides_are_stripped_on_cached_routes(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/public"] = reflect
    gateway = await cached(gateways, port)
    await fetch(
        gateway,
        "/public",
        X_Original_URL="/admin/secrets",
        X_HTTP_Method_Override="DELETE",
    )
    _, _, body = await fetch(gateway, "/public")
    assert json.loads(body) == {
        "host": json.loads(body)["host"],
        "proto": "http",
        "path": "/public",
        "method": "GET",
    }
    assert all("X-Original-URL" not in r.headers for r in recorder.seen)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"path": "/a?x=1"}, {"path": "/a?x=2"}),
        ({"path": "/a"}, {"path": "/A"}),
        ({"path": "/a", "Host": "one.example.com"}, {"path": "/a", "Host": "two.example.com"}),
        ({"path": "/a", "Host": "one.example.com"}, {"path": "/a", "Host": "one.example.com:8080"}),
    ],
)
async def test_the_key_separates_hosts_ports_paths_and_queries(
    origin: tuple[Origin, int],
    gateways: list[RunningGateway],
    first: dict[str, str],
    second: dict[str, str],
) -> None:
    recorder, port = origin

    def echo_target(request: web.Request) -> web.Response:
        return web.Response(
            body=f"{request.host} {request.path_qs}".encode(),
            headers={"Cache-Control": "max-age=60"},
        )

    recorder.answers["/a"] = recorder.answers["/A"] = echo_target
    gateway = await cached(gateways, port)
    first_path = first.pop("path")
    second_path = second.pop("path")
    _, _, one = await fetch(gateway, first_path, **first)
    _, _, two = await fetch(gateway, second_path, **second)
    assert one != two
    assert len(recorder.seen) == 2


async def test_variants_per_key_are_capped(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin

    def by_header(request: web.Request) -> web.Response:
        return web.Response(
            body=request.headers.get("X-Junk", "").encode(),
            headers={"Cache-Control": "max-age=60", "Vary": "X-Junk"},
        )

    recorder.answers["/v"] = by_header
    gateway = await cached(gateways, port)
    for index in range(40):
        await fetch(gateway, "/v", Host="api.example.com", X_Junk=f"value-{index}")
    await asyncio.sleep(0.05)
    memory = gateway.caches.memory
    assert memory is not None
    key = key_for_url("http://api.example.com/v")
    assert key is not None
    assert len(memory.lookup(key)) == 8


async def test_a_path_extension_never_makes_a_response_cacheable(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    # No freshness at all, and a private one: a .css or .js name changes neither.
    recorder.answers["/account/profile.css"] = respond(b"name: alice")
    recorder.answers["/account/settings.js"] = respond(b"token", Cache_Control="private")
    gateway = await cached(gateways, port)
    for path in ("/account/profile.css", "/account/settings.js"):
        await fetch(gateway, path)
        await fetch(gateway, path)
        assert recorder.hits(path) == 2


@pytest.fixture
async def truncating_origin() -> AsyncIterator[tuple[list[int], int]]:
    """An upstream that promises 1,000 bytes and closes after 500; it counts its requests."""
    requests = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        requests[0] += 1
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nCache-Control: max-age=60\r\n\r\n"
            + b"x" * 500
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield requests, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_a_truncated_body_is_never_stored(
    truncating_origin: tuple[list[int], int], gateways: list[RunningGateway]
) -> None:
    requests, port = truncating_origin
    gateway = await cached(gateways, port)
    for _ in range(2):
        # The client sees its connection aborted (never a clean end of a short body).
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch(gateway, "/t")
    assert requests == [2]
    memory = gateway.caches.memory
    assert memory is not None
    assert memory.entries == 0


async def test_a_get_with_a_body_is_neither_answered_nor_stored_by_the_cache(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin

    async def search(request: web.Request) -> web.Response:
        query = await request.read()
        return web.Response(body=b"results for " + query, headers={"Cache-Control": "max-age=60"})

    recorder.answers["/search"] = search
    gateway = await cached(gateways, port)
    url = f"http://127.0.0.1:{gateway.address[1]}/search"
    async with aiohttp.ClientSession() as session:
        for query in (b"alice", b"bob"):
            async with session.get(url, data=query) as response:
                assert await response.read() == b"results for " + query
                assert "Cache-Status" not in response.headers
        _, _, body = await fetch(gateway, "/search")
    assert body == b"results for "
    assert recorder.hits("/search") == 3
