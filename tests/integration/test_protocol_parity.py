"""The per-route chain answers HTTP/1.1 and HTTP/2 alike: each test runs once per protocol with
the same assertions (routing, forwarding, bodies both ways, rate limits, cache, compression,
errors, HEAD, streaming, metrics).

Both protocols reach the same cleartext listener (``http2.h2c``): HTTP/1.1 through aiohttp's
client, HTTP/2 with prior knowledge through `tests.h2client`.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import brotli
import pytest
from aiohttp import web

from gateway.app import RunningGateway, start
from gateway.config.model import (
    CacheConfig,
    CompressionConfig,
    Http2Config,
    ListenAddress,
    ListenerConfig,
    RateLimitConfig,
    RouteConfig,
    RouteMatch,
    ServerConfig,
)
from gateway.ratelimit.rate import parse_rate
from tests.h2client import H2Client
from tests.harness import closed_port, gateway_config, serve_app, upstream_to
from tests.integration.test_observability import scrape

BIG = json.dumps([{"id": i, "name": f"item-{i}", "tags": ["a", "b"]} for i in range(20000)])


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def one(self, name: str) -> str | None:
        values = self.headers.get(name, [])
        return values[0] if values else None


class Client(Protocol):
    protocol: str
    via: str

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Reply: ...


class Http1Client:
    protocol = "http1"
    via = "1.1 gateway"

    def __init__(self, port: int, session: aiohttp.ClientSession) -> None:
        self._base = f"http://127.0.0.1:{port}"
        self._session = session

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Reply:
        async with self._session.request(
            method,
            self._base + path,
            headers=list(headers),
            data=None if body is None else io.BytesIO(body),
        ) as response:
            data = await response.read()
            fields: dict[str, list[str]] = {}
            for name, value in response.headers.items():
                fields.setdefault(name.lower(), []).append(value)
            return Reply(response.status, fields, data)


class Http2Client:
    protocol = "http2"
    via = "2 gateway"

    def __init__(self, client: H2Client) -> None:
        self._client = client

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Reply:
        lowered = [(name.lower(), value) for name, value in headers]
        response = await self._client.request(method, path, headers=lowered, body=body)
        assert response.reset is None, f"stream reset with code {response.reset}"
        fields: dict[str, list[str]] = {}
        for name, value in response.headers:
            fields.setdefault(name, []).append(value)
        return Reply(response.status, fields, response.body)


def upstream_app() -> web.Application:
    hits = {"cached": 0}

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "target": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_length": len(body),
                "body_tail": body[-16:].decode("latin-1"),
            }
        )

    async def cached(_: web.Request) -> web.Response:
        hits["cached"] += 1
        return web.json_response(
            {"hits": hits["cached"]}, headers={"Cache-Control": "public, max-age=60"}
        )

    async def big(_: web.Request) -> web.Response:
        return web.Response(text=BIG, content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for index in range(5):
            await response.write(f"part{index};".encode())
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def no_content(_: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_route("*", "/cached/{tail:.*}", cached)
    app.router.add_route("*", "/compressed/big", big)
    app.router.add_route("*", "/stream", stream)
    app.router.add_route("*", "/204", no_content)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def gateway() -> AsyncIterator[RunningGateway]:
    async with serve_app(upstream_app()) as port:
        routes = [
            RouteConfig(
                name="limited",
                upstream="up",
                match=RouteMatch(path_prefix="/limited"),
                rate_limit=RateLimitConfig(rate=parse_rate("2/minute"), burst=2),
            ),
            RouteConfig(
                name="cached",
                upstream="up",
                match=RouteMatch(path_prefix="/cached"),
                cache=CacheConfig(),
            ),
            RouteConfig(
                name="compressed",
                upstream="up",
                match=RouteMatch(path_prefix="/compressed"),
                compression=CompressionConfig(),
            ),
            RouteConfig(name="dead", upstream="dead", match=RouteMatch(path_prefix="/dead")),
            RouteConfig(name="api", upstream="up", match=RouteMatch(path_prefix="/api")),
            RouteConfig(name="rest", upstream="up", match=RouteMatch(path_prefix="/stream")),
            RouteConfig(name="empty", upstream="up", match=RouteMatch(path_prefix="/204")),
        ]
        listener = ListenerConfig(ListenAddress("127.0.0.1", 0), http2=Http2Config(h2c=True))
        config = gateway_config(
            [upstream_to("up", port), upstream_to("dead", closed_port())],
            routes=routes,
            server=ServerConfig(listeners=(listener,)),
        )
        running = await start(config)
        try:
            yield running
        finally:
            await running.drain(1.0)


@pytest.fixture(params=["http1", "http2"])
async def client(request: pytest.FixtureRequest, gateway: RunningGateway) -> AsyncIterator[Client]:
    port = gateway.addresses[0][1]
    if request.param == "http1":
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            yield Http1Client(port, session)
    else:
        async with H2Client(port) as h2:
            yield Http2Client(h2)


async def test_a_request_is_forwarded_with_the_gateways_fields(client: Client) -> None:
    reply = await client.request("GET", "/api/items?q=1", headers=[("X-Custom", "yes")])
    assert reply.status == 200
    echoed = json.loads(reply.body)
    fields = {name.lower(): value for name, value in echoed["headers"]}
    assert echoed["target"] == "/api/items?q=1"
    assert fields["x-custom"] == "yes"
    assert fields["x-forwarded-for"] == "127.0.0.1"
    assert fields["x-forwarded-proto"] == "http"
    assert fields["via"] == client.via
    assert fields["host"] == "127.0.0.1:" + fields["host"].rsplit(":", 1)[1]
    assert reply.one("x-request-id") == fields["x-request-id"]
    assert reply.one("via") == "1.1 gateway"  # the upstream's response came over HTTP/1.1


async def test_an_unmatched_path_gets_the_json_404(client: Client) -> None:
    reply = await client.request("GET", "/nowhere")
    assert reply.status == 404
    body = json.loads(reply.body)
    assert body["error"] == "route_not_found"
    assert body["request_id"] == reply.one("x-request-id")
    assert reply.one("content-type") == "application/json"


@pytest.mark.parametrize("size", [0, 1000, 200_000, 3_000_000])
async def test_request_bodies_reach_the_upstream_whole(client: Client, size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    reply = await client.request("POST", "/api/upload", body=body)
    assert reply.status == 200
    echoed = json.loads(reply.body)
    assert echoed["body_length"] == size
    assert echoed["body_tail"] == body[-16:].decode("latin-1")


async def test_the_rate_limit_answers_429_with_its_fields(client: Client) -> None:
    statuses = [(await client.request("GET", "/limited/x")).status for _ in range(2)]
    refused = await client.request("GET", "/limited/x")
    assert statuses == [200, 200]
    assert refused.status == 429
    assert json.loads(refused.body)["error"] == "rate_limited"
    assert refused.one("retry-after") is not None


async def test_the_cache_answers_the_second_request(client: Client) -> None:
    path = f"/cached/{client.protocol}"
    first = await client.request("GET", path)
    second = await client.request("GET", path)
    assert json.loads(first.body) == json.loads(second.body) == {"hits": 1}
    assert "hit" in (second.one("cache-status") or "")
    assert second.one("age") is not None


@pytest.mark.parametrize("coding", ["br", "gzip"])
async def test_compression_is_negotiated(client: Client, coding: str) -> None:
    reply = await client.request("GET", "/compressed/big", headers=[("Accept-Encoding", coding)])
    assert reply.status == 200
    assert reply.one("content-encoding") == coding
    assert "Accept-Encoding" in (reply.one("vary") or "")
    decoded = brotli.decompress(reply.body) if coding == "br" else gzip.decompress(reply.body)
    assert decoded.decode() == BIG


async def test_a_large_response_arrives_whole(client: Client) -> None:
    reply = await client.request(
        "GET", "/compressed/big", headers=[("Accept-Encoding", "identity")]
    )
    assert reply.status == 200
    assert reply.body.decode() == BIG


async def test_an_unreachable_upstream_is_a_json_502(client: Client) -> None:
    reply = await client.request("GET", "/dead/x")
    assert reply.status == 502
    assert json.loads(reply.body)["request_id"] == reply.one("x-request-id")


async def test_head_has_no_body(client: Client) -> None:
    reply = await client.request("HEAD", "/api/head")
    assert reply.status == 200
    assert reply.body == b""


async def test_a_streamed_response_is_relayed_in_order(client: Client) -> None:
    reply = await client.request("GET", "/stream")
    assert reply.status == 200
    assert reply.body == b"part0;part1;part2;part3;part4;"


async def test_a_204_has_no_body(client: Client) -> None:
    reply = await client.request("GET", "/204")
    assert reply.status == 204
    assert reply.body == b""


async def test_requests_are_counted_under_their_protocol(
    client: Client, gateway: RunningGateway
) -> None:
    for _ in range(3):
        assert (await client.request("GET", "/api/counted")).status == 200
    gateway.flush_metrics()
    async with aiohttp.ClientSession() as session:
        samples = await scrape(session, gateway)
    labels = f"method=GET,protocol={client.protocol},route=api,status_class=2xx"
    key = f"gateway_requests_total{{{labels}}}"
    assert samples[key] >= 3
