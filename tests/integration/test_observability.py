"""Metrics, trace propagation, admin endpoints and in-process reload on a real gateway."""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from dataclasses import replace

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import RunningGateway, start
from gateway.config.model import AdminConfig, ListenAddress, RouteConfig, RouteMatch
from tests.harness import (
    LOCAL,
    echo_app,
    fields_of,
    gateway_config,
    keepalive_get,
    serve_app,
    upstream_to,
)
from tests.upstream_servers import RawConnection, RawUpstream, ok


def unique(prefix: str) -> str:
    """Metric labels are process-wide in tests: unique names keep each test's counts apart."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def scrape(client: aiohttp.ClientSession, gateway: RunningGateway) -> dict[str, float]:
    assert gateway.admin_address is not None
    host, port = gateway.admin_address
    async with client.get(f"http://{host}:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_request_and_upstream_metrics_count_what_happened(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    route, dead_route = unique("api"), unique("dead")
    upstream, dead = unique("echo"), unique("dead")
    import socket

    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        closed_port = probe.getsockname()[1]
    config = gateway_config(
        [upstream_to(upstream, echo_port), upstream_to(dead, closed_port)],
        routes=[
            RouteConfig(name=dead_route, upstream=dead, match=RouteMatch(path_prefix="/dead")),
            RouteConfig(name=route, upstream=upstream, match=RouteMatch(host="api.test")),
        ],
    )
    gateway = await start(replace(config, admin=AdminConfig(ListenAddress(LOCAL, 0))))
    gateways.append(gateway)
    base = f"http://{LOCAL}:{gateway.address[1]}"
    async with aiohttp.ClientSession() as client:
        for _ in range(7):
            async with client.get(f"{base}/x", headers={"Host": "api.test"}) as response:
                assert response.status == 200
        async with client.post(f"{base}/x", headers={"Host": "api.test"}, data=b"1") as r:
            assert r.status == 200
        async with client.get(f"{base}/nowhere", headers={"Host": "other.test"}) as r:
            assert r.status == 404
        async with client.get(f"{base}/dead") as r:
            assert r.status == 502
        samples = await scrape(client, gateway)
    ok = f"route={route},status_class=2xx"
    assert samples[f"gateway_requests_total{{method=GET,protocol=http1,{ok}}}"] == 7
    assert samples[f"gateway_requests_total{{method=POST,protocol=http1,{ok}}}"] == 1
    assert samples[f"gateway_request_duration_seconds_count{{route={route}}}"] == 8
    assert samples[f"gateway_upstream_request_duration_seconds_count{{upstream={upstream}}}"] == 8
    assert samples[f"gateway_upstream_errors_total{{kind=connect,upstream={dead}}}"] == 1
    assert (
        samples[
            f"gateway_requests_total{{method=GET,protocol=http1,route={dead_route},status_class=5xx}}"
        ]
        == 1
    )
    assert (
        samples[
            "gateway_requests_total{method=GET,protocol=http1,route=unmatched,status_class=4xx}"
        ]
        >= 1
    )
    assert any(key.startswith("gateway_build_info{") for key in samples)
    assert "gateway_inflight_requests{}" in samples
    assert "gateway_connections{}" in samples


async def test_method_label_stays_low_cardinality(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    route = unique("r")
    gateway = await start(
        gateway_config([upstream_to("e", echo_port)], [RouteConfig(name=route, upstream="e")])
    )
    gateways.append(gateway)
    async with aiohttp.ClientSession() as client:
        # llhttp parses only methods it knows (HTTP, WebDAV...); these get no label of their own.
        for method in ("PROPFIND", "MKCOL", "LOCK"):
            async with client.request(method, f"http://{LOCAL}:{gateway.address[1]}/") as r:
                assert r.status == 200
        samples = await scrape(client, gateway)
    assert (
        samples[
            f"gateway_requests_total{{method=other,protocol=http1,route={route},status_class=2xx}}"
        ]
        == 3
    )
    assert not any("method=PROPFIND" in key for key in samples)


async def test_traceparent_is_continued_or_started_upstream(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await start(gateway_config([upstream_to("e", echo_port)]))
    gateways.append(gateway)
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with aiohttp.ClientSession() as client:
        url = f"http://{LOCAL}:{gateway.address[1]}/"
        async with client.get(url, headers={"traceparent": incoming}) as response:
            continued = fields_of(await response.json(), "traceparent")
        async with client.get(url) as response:
            started = fields_of(await response.json(), "traceparent")
    assert len(continued) == 1
    assert continued[0].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert continued[0] != incoming
    assert len(started) == 1
    assert started[0].startswith("00-")
    assert started[0].endswith("-01")


TOKEN = "s3cret-token-0123456789"


async def start_with_admin_token(echo_port: int, gateways: list[RunningGateway], token: str) -> str:
    """An in-process gateway whose admin listener needs ``token``; the admin base URL."""
    config = gateway_config([upstream_to("e", echo_port)])
    gateway = await start(replace(config, admin=replace(config.admin, token=token)))
    gateways.append(gateway)
    assert gateway.admin_address is not None
    return f"http://{gateway.admin_address[0]}:{gateway.admin_address[1]}"


async def test_admin_token_guards_mutating_requests_only(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    admin = await start_with_admin_token(echo_port, gateways, TOKEN)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin}/healthz") as response:
            assert response.status == 200
        async with client.post(f"{admin}/purge") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with client.post(
            f"{admin}/purge", headers={"Authorization": "Bearer wrong-token-00000000"}
        ) as response:
            assert response.status == 401
        async with client.post(
            f"{admin}/purge", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            # Past the guard; there is no purge endpoint (yet), so 405/404, never 401.
            assert response.status in (404, 405)


async def test_config_view_has_hash_and_no_secrets(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    admin = await start_with_admin_token(echo_port, gateways, TOKEN)
    async with aiohttp.ClientSession() as client, client.get(f"{admin}/config") as response:
        assert response.status == 200
        text = await response.text()
        view = await response.json()
    assert TOKEN not in text
    assert len(view["hash"]) == 64
    assert "routes" in view


async def test_reload_swaps_routes_and_keeps_unchanged_pools(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    async with serve_app(echo_app("second")) as second_port:
        first = gateway_config(
            [upstream_to("e", echo_port), upstream_to("gone", second_port)],
            routes=[
                RouteConfig(name="old", upstream="gone", match=RouteMatch(path_prefix="/old")),
                RouteConfig(name="default", upstream="e"),
            ],
        )
        gateway = await start(first)
        gateways.append(gateway)
        kept_pool = gateway.dispatcher.runtime.pools["e"]
        gone_pool = gateway.dispatcher.runtime.pools["gone"]
        url = f"http://{LOCAL}:{gateway.address[1]}"
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{url}/old") as response:
                assert (await response.json())["upstream"] == "second"
            second = replace(
                first,
                upstreams=(upstream_to("e", echo_port), upstream_to("new", second_port)),
                routes=(
                    RouteConfig(name="new", upstream="new", match=RouteMatch(path_prefix="/new")),
                    RouteConfig(name="default", upstream="e"),
                ),
            )
            gateway.reload(second)
            async with client.get(f"{url}/new/x") as response:
                assert (await response.json())["upstream"] == "second"
            async with client.get(f"{url}/old") as response:
                assert (await response.json())["upstream"] == "echo"
        runtime = gateway.dispatcher.runtime
        assert runtime.pools["e"] is kept_pool
        assert "gone" not in runtime.pools
        await asyncio.sleep(0)
        assert gone_pool.idle_connections == 0


async def test_a_request_in_flight_finishes_on_the_config_it_started_with(
    gateways: list[RunningGateway],
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="old upstream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    async with serve_app(app) as slow_port, serve_app(echo_app("new")) as new_port:
        config = gateway_config([upstream_to("u", slow_port)])
        gateway = await start(config)
        gateways.append(gateway)
        async with aiohttp.ClientSession() as client:
            pending = asyncio.create_task(client.get(f"http://{LOCAL}:{gateway.address[1]}/"))
            await arrived.wait()
            gateway.reload(replace(config, upstreams=(upstream_to("u", new_port),)))
            async with client.get(f"http://{LOCAL}:{gateway.address[1]}/") as response:
                assert (await response.json())["upstream"] == "new"
            release.set()
            async with await pending as response:
                assert await response.text() == "old upstream"


async def test_reload_applies_server_limits_to_new_connections(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    from gateway.config.model import ServerTimeouts

    config = gateway_config([upstream_to("e", echo_port)])
    gateway = await start(config)
    gateways.append(gateway)
    keepalive = replace(config.server, timeouts=ServerTimeouts(keepalive=0.2))
    gateway.reload(replace(config, server=keepalive))
    reader, writer = await asyncio.open_connection(LOCAL, gateway.address[1])
    assert (await keepalive_get(reader, writer)).startswith(b"HTTP/1.1 200")
    # The reloaded keep-alive timeout (not the 60 s default) closes the idle connection.
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()


async def test_requests_after_a_client_gone_mid_response_are_still_counted(
    gateways: list[RunningGateway],
) -> None:
    """The soak's finding: compiled, a `finally` that awaited re-raised the first ClientGone at
    the end of every later response, which then went uncounted (and unlogged)."""
    size = 1024 * 1024

    async def respond(conn: RawConnection) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target != b"/big":
                await conn.send(ok())
                continue
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // 65536):
                await conn.send(b"x" * 65536)
                await asyncio.sleep(0.005)

    route = unique("gone")
    async with RawUpstream(respond) as upstream:
        config = gateway_config(
            [upstream_to("big", upstream.port)], [RouteConfig(name=route, upstream="big")]
        )
        gateway = await start(replace(config, admin=AdminConfig(ListenAddress(LOCAL, 0))))
        gateways.append(gateway)
        port = gateway.address[1]
        key = f"gateway_requests_total{{method=GET,protocol=http1,route={route},status_class=2xx}}"
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                # A client that reads part of the big answer and resets the connection.
                reader, writer = await asyncio.open_connection(LOCAL, port)
                writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
                await reader.readexactly(100_000)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                await asyncio.sleep(0.2)
            before = (await scrape(client, gateway)).get(key, 0.0)
            for _ in range(5):
                async with client.get(f"http://{LOCAL}:{port}/small") as response:
                    assert response.status == 200
            after = (await scrape(client, gateway)).get(key, 0.0)
    assert after - before == 5
