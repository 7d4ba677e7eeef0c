"""The response cache end to end (issue 6): a real gateway in front of a real, recording upstream.

The upstream answers each path the way the test wants (status, fields, body) and counts what
reached it, so every assertion about hits is an assertion about requests the upstream never saw.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from gateway.app import RunningGateway, start
from gateway.config.model import CacheConfig, RouteConfig
from tests.harness import LOCAL, gateway_config, upstream_to
from tests.integration.cache_origin import Origin, fetch, respond


async def cached_gateway(
    gateways: list[RunningGateway], port: int, **options: object
) -> RunningGateway:
    route = RouteConfig(name="api", upstream="origin", cache=CacheConfig(**options))  # type: ignore[arg-type]
    gateway = await start(gateway_config([upstream_to("origin", port)], [route]))
    gateways.append(gateway)
    return gateway


async def test_a_fresh_response_is_served_from_the_cache(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/a"] = respond(b"stored body", Cache_Control="max-age=60", ETag='"v1"')
    gateway = await cached_gateway(gateways, port)
    first = await fetch(gateway, "/a")
    second = await fetch(gateway, "/a")
    third = await fetch(gateway, "/a", X_Request_ID="mine")
    assert recorder.hits("/a") == 1
    assert [r[0] for r in (first, second, third)] == [200, 200, 200]
    assert first[2] == second[2] == third[2] == b"stored body"
    assert first[1]["Cache-Status"] == "gateway; fwd=uri-miss; stored"
    assert second[1]["Cache-Status"].startswith("gateway; hit; ttl=")
    assert int(second[1]["Age"]) >= 0
    assert second[1]["ETag"] == '"v1"'
    # Each answer carries its own request id, never the one of the request that stored it.
    assert first[1]["X-Request-ID"] != second[1]["X-Request-ID"]
    assert third[1]["X-Request-ID"] == "mine"


async def test_head_is_answered_from_the_stored_get(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/a"] = respond(b"12345", Cache_Control="max-age=60")
    gateway = await cached_gateway(gateways, port)
    await fetch(gateway, "/a")
    status, headers, body = await fetch(gateway, "/a", "HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "5")
    assert recorder.hits("/a") == 1


async def test_thirty_concurrent_misses_make_one_upstream_request(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.delay = 0.3
    recorder.answers["/slow"] = respond(b"x" * 5000, Cache_Control="max-age=60")
    gateway = await cached_gateway(gateways, port)
    answers = await asyncio.gather(*(fetch(gateway, "/slow") for _ in range(30)))
    assert recorder.hits("/slow") == 1
    assert all(status == 200 and body == b"x" * 5000 for status, _, body in answers)
    statuses = sorted(headers["Cache-Status"] for _, headers, _ in answers)
    assert statuses.count("gateway; fwd=uri-miss; stored") == 1
    assert sum("detail=coalesced" in s for s in statuses) == 29


async def test_coalesced_waiters_go_upstream_when_the_response_was_not_storable(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.delay = 0.2
    recorder.answers["/private"] = respond(b"mine", Cache_Control="private, max-age=60")
    gateway = await cached_gateway(gateways, port)
    answers = await asyncio.gather(*(fetch(gateway, "/private") for _ in range(5)))
    assert all(body == b"mine" for _, _, body in answers)
    assert recorder.hits("/private") == 5


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"Cache_Control": "no-store"}, "no-store"),
        ({"Cache_Control": "private"}, "private"),
        ({"Cache_Control": "max-age=60", "Set_Cookie": "id=7"}, "set-cookie"),
        ({"Cache_Control": "max-age=60", "Vary": "*"}, "vary-star"),
    ],
)
async def test_responses_that_must_not_be_stored_are_not(
    origin: tuple[Origin, int], gateways: list[RunningGateway], fields: dict[str, str], reason: str
) -> None:
    recorder, port = origin
    recorder.answers["/x"] = respond(b"personal", fields=fields)
    gateway = await cached_gateway(gateways, port)
    first = await fetch(gateway, "/x")
    await fetch(gateway, "/x")
    assert recorder.hits("/x") == 2
    assert first[1]["Cache-Status"] == f"gateway; fwd=uri-miss; detail={reason}"


@pytest.mark.parametrize("status", [500, 502, 503, 206])
async def test_errors_and_partial_content_are_never_stored(
    origin: tuple[Origin, int], gateways: list[RunningGateway], status: int
) -> None:
    recorder, port = origin
    recorder.answers["/e"] = respond(b"oops", status=status, Cache_Control="max-age=60")
    gateway = await cached_gateway(gateways, port)
    await fetch(gateway, "/e")
    await fetch(gateway, "/e")
    assert recorder.hits("/e") == 2


async def test_set_cookie_responses_are_stored_when_the_route_opts_in(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/c"] = respond(b"b", Cache_Control="max-age=60", Set_Cookie="theme=dark")
    gateway = await cached_gateway(gateways, port, store_set_cookie=True)
    await fetch(gateway, "/c")
    _, headers, _ = await fetch(gateway, "/c")
    assert recorder.hits("/c") == 1
    assert headers["Set-Cookie"] == "theme=dark"


async def test_authorization_requests_only_get_responses_that_allow_it(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/plain"] = respond(b"for alice", Cache_Control="max-age=60")
    recorder.answers["/public"] = respond(b"for all", Cache_Control="public, max-age=60")
    gateway = await cached_gateway(gateways, port)
    # Stored from an anonymous request; an authorised one must not get it (RFC 9111 §3.5)...
    await fetch(gateway, "/plain")
    await fetch(gateway, "/plain", Authorization="Bearer bob")
    assert recorder.hits("/plain") == 2
    # ...and a response to an authorised request is not stored without public.
    await fetch(gateway, "/plain", Authorization="Bearer alice")
    await fetch(gateway, "/plain", Authorization="Bearer alice")
    assert recorder.hits("/plain") == 4
    await fetch(gateway, "/public", Authorization="Bearer alice")
    await fetch(gateway, "/public", Authorization="Bearer bob")
    await fetch(gateway, "/public")
    assert recorder.hits("/public") == 1


async def test_cookie_requests_are_not_served_shared_entries(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/page"] = respond(b"page", Cache_Control="max-age=60")
    recorder.answers["/by-cookie"] = respond(b"v", Cache_Control="max-age=60", Vary="Cookie")
    gateway = await cached_gateway(gateways, port)
    await fetch(gateway, "/page")
    await fetch(gateway, "/page", Cookie="session=alice")
    assert recorder.hits("/page") == 2
    # With Vary: Cookie the cookie is part of the key: alice's variant is alice's only.
    await fetch(gateway, "/by-cookie", Cookie="session=alice")
    await fetch(gateway, "/by-cookie", Cookie="session=alice")
    await fetch(gateway, "/by-cookie", Cookie="session=bob")
    assert recorder.hits("/by-cookie") == 2


async def test_vary_keeps_one_variant_per_selecting_value(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin

    def by_language(request: web.Request) -> web.Response:
        language = request.headers.get("Accept-Language", "none")
        return web.Response(
            body=language.encode(),
            headers={"Cache-Control": "max-age=60", "Vary": "Accept-Language"},
        )

    recorder.answers["/v"] = by_language
    gateway = await cached_gateway(gateways, port)
    for language in ("en", "fr", "en", "fr", "EN"):
        _, _, body = await fetch(gateway, "/v", Accept_Language=language)
        assert body.lower() == language.lower().encode()
    _, headers, body = await fetch(gateway, "/v")
    assert body == b"none"
    # en, fr and none; "EN" is the same list value as "en" once normalised.
    assert recorder.hits("/v") == 3
    assert headers["Cache-Status"] == "gateway; fwd=vary-miss; stored"


async def test_client_conditionals_get_304_from_a_fresh_entry(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/a"] = respond(
        b"body",
        Cache_Control="max-age=60",
        ETag='"v1"',
        Last_Modified="Sun, 06 Nov 1994 08:49:37 GMT",
    )
    gateway = await cached_gateway(gateways, port)
    await fetch(gateway, "/a")
    status, headers, body = await fetch(gateway, "/a", If_None_Match='"v0", W/"v1"')
    assert (status, body, headers["ETag"]) == (304, b"", '"v1"')
    status, _, _ = await fetch(gateway, "/a", If_None_Match='"v2"')
    assert status == 200
    status, _, _ = await fetch(gateway, "/a", If_Modified_Since="Sun, 06 Nov 1994 08:49:37 GMT")
    assert status == 304
    status, _, _ = await fetch(gateway, "/a", If_Modified_Since="Sat, 05 Nov 1994 08:49:37 GMT")
    assert status == 200
    assert recorder.hits("/a") == 1


async def test_a_stale_entry_is_revalidated_and_refreshed_by_a_304(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    conditionals: list[str | None] = []

    def validated(request: web.Request) -> web.Response:
        conditionals.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(
                status=304,
                headers={"ETag": '"v1"', "Cache-Control": "max-age=60", "X-Refreshed": "yes"},
            )
        return web.Response(
            body=b"original", headers={"ETag": '"v1"', "Cache-Control": "max-age=0"}
        )

    recorder.answers["/r"] = validated
    gateway = await cached_gateway(gateways, port)
    first = await fetch(gateway, "/r")
    second = await fetch(gateway, "/r")
    third = await fetch(gateway, "/r")
    assert conditionals == [None, '"v1"']
    assert second[2] == b"original"
    assert second[1]["Cache-Status"] == "gateway; hit; fwd=stale; fwd-status=304; ttl=60"
    assert second[1]["X-Refreshed"] == "yes"
    # Refreshed to max-age=60 by the 304: the third is a plain hit.
    assert third[1]["Cache-Status"].startswith("gateway; hit; ttl=")
    assert first[2] == third[2] == b"original"


async def test_request_no_cache_revalidates_and_only_if_cached_never_goes_upstream(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/a"] = respond(b"v", Cache_Control="max-age=60")
    gateway = await cached_gateway(gateways, port)
    status, _, _ = await fetch(gateway, "/a", Cache_Control="only-if-cached")
    assert status == 504
    assert recorder.hits("/a") == 0
    await fetch(gateway, "/a")
    await fetch(gateway, "/a", Cache_Control="no-cache")
    assert recorder.hits("/a") == 2
    status, _, _ = await fetch(gateway, "/a", Cache_Control="only-if-cached")
    assert status == 200
    assert recorder.hits("/a") == 2


async def test_stale_while_revalidate_answers_at_once_and_refreshes_once(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    version = [1]

    def versioned(request: web.Request) -> web.Response:
        return web.Response(
            body=b"v%d" % version[0],
            # Two seconds, not one: Date has a one-second resolution, so a response can be
            # up to a second old on arrival (its apparent age, RFC 9111 §4.2.3).
            headers={"Cache-Control": "max-age=2, stale-while-revalidate=30"},
        )

    recorder.answers["/s"] = versioned
    gateway = await cached_gateway(gateways, port)
    await fetch(gateway, "/s")
    version[0] = 2
    # The refresh takes a while upstream: answers that waited for it would be v2.
    recorder.delay = 0.3
    await asyncio.sleep(2.2)
    answers = await asyncio.gather(*(fetch(gateway, "/s") for _ in range(5)))
    # All answered with the stale body, and one background request refreshed it.
    assert {body for _, _, body in answers} == {b"v1"}
    assert all("fwd=stale" in headers["Cache-Status"] for _, headers, _ in answers)
    await asyncio.sleep(0.5)
    recorder.delay = 0.0
    _, _, body = await fetch(gateway, "/s")
    assert body == b"v2"
    assert recorder.hits("/s") == 2


async def test_stale_if_error_serves_the_stale_response_when_the_upstream_fails(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/f"] = respond(b"good", Cache_Control="max-age=1, stale-if-error=60")
    gateway = await cached_gateway(gateways, port)
    await fetch(gateway, "/f")
    recorder.answers["/f"] = respond(b"broken", status=503)
    await asyncio.sleep(1.1)
    status, headers, body = await fetch(gateway, "/f")
    assert (status, body) == (200, b"good")
    assert "detail=stale-if-error" in headers["Cache-Status"]
    # Without the window, the failure goes to the client.
    recorder.answers["/g"] = respond(b"good", Cache_Control="max-age=1")
    await fetch(gateway, "/g")
    recorder.answers["/g"] = respond(b"broken", status=503)
    await asyncio.sleep(1.1)
    status, _, body = await fetch(gateway, "/g")
    assert (status, body) == (503, b"broken")


async def test_unsafe_methods_invalidate_the_target_and_its_location(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/items"] = lambda request: (
        web.Response(status=201, headers={"Location": "/items/7"})
        if request.method == "POST"
        else web.Response(body=b"list", headers={"Cache-Control": "max-age=60"})
    )
    recorder.answers["/items/7"] = respond(b"item", Cache_Control="max-age=60")
    gateway = await cached_gateway(gateways, port)
    await fetch(gateway, "/items")
    await fetch(gateway, "/items/7")
    status, _, _ = await fetch(gateway, "/items", "POST")
    assert status == 201
    await asyncio.sleep(0.05)
    await fetch(gateway, "/items")
    await fetch(gateway, "/items/7")
    assert recorder.hits("/items") == 3  # GET, POST, GET again
    assert recorder.hits("/items/7") == 2


async def test_a_large_response_streams_through_unstored(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/big"] = respond(b"x" * 200_000, Cache_Control="max-age=60")
    gateway = await cached_gateway(gateways, port, max_object_size=100_000)
    first = await fetch(gateway, "/big")
    second = await fetch(gateway, "/big")
    assert first[2] == second[2] == b"x" * 200_000
    assert recorder.hits("/big") == 2
    assert first[1]["Cache-Status"] == "gateway; fwd=uri-miss; detail=too-large"


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_results_are_counted_and_the_memory_store_measured(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    recorder.answers["/m"] = respond(b"y" * 1000, Cache_Control="max-age=60")
    gateway = await cached_gateway(gateways, port)
    before = {
        result: _sample("gateway_cache_requests_total", route="api", result=result)
        for result in ("hit", "miss", "bypass")
    }
    await fetch(gateway, "/m")
    await fetch(gateway, "/m")
    await fetch(gateway, "/m", "POST")
    gateway.flush_metrics()
    counted = {
        result: _sample("gateway_cache_requests_total", route="api", result=result) - value
        for result, value in before.items()
    }
    assert counted == {"hit": 1, "miss": 1, "bypass": 1}
    # The sampler publishes the store's size each second.
    await asyncio.sleep(1.2)
    assert _sample("gateway_cache_entries", store="memory") == 0  # the POST invalidated /m
    await fetch(gateway, "/m")
    await asyncio.sleep(1.2)
    assert _sample("gateway_cache_entries", store="memory") == 1
    assert _sample("gateway_cache_bytes", store="memory") > 1000


async def test_a_miss_streams_to_its_client_while_it_is_stored(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    first_chunk_seen = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await response.prepare(request)
        await response.write(b"first;")
        # The rest only once the client has the first part: a cache that waited for the
        # whole body before answering would never get here.
        await asyncio.wait_for(first_chunk_seen.wait(), 5)
        await response.write(b"second")
        await response.write_eof()
        return response

    recorder.answers["/stream"] = slow
    gateway = await cached_gateway(gateways, port)
    url = f"http://{LOCAL}:{gateway.address[1]}/stream"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert await response.content.readexactly(6) == b"first;"
        first_chunk_seen.set()
        assert await response.read() == b"second"
    await asyncio.sleep(0.05)
    status, headers, body = await fetch(gateway, "/stream")
    assert (status, body) == (200, b"first;second")
    assert headers["Cache-Status"].startswith("gateway; hit")
    assert recorder.hits("/stream") == 1
