"""https targets: certificate verification, SNI, and TLS faults, against real TLS servers."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from gateway.config.model import HealthCheckConfig, Target, UpstreamTLS
from gateway.errors import BadGateway, GatewayTimeout
from gateway.upstream import Resolver, UpstreamPool
from gateway.upstream.resolver import Address
from tests.harness import eventually
from tests.upstream_servers import (
    AioUpstream,
    RawConnection,
    RawUpstream,
    collect,
    upstream_config,
)

AUTHORITY = b"client.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(
    ca: trustme.CA, *names: str, seen_sni: list[str] | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    if seen_sni is not None:
        sni = seen_sni

        def record(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            sni.append(name or "")

        context.sni_callback = record
    return context


async def hello(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=b"secure " + request.path.encode())


async def fetch(pool: UpstreamPool, target: bytes = b"/") -> bytes:
    response = await pool.request("GET", target, [], AUTHORITY, None, None)
    try:
        return await collect(response.body)
    finally:
        await response.release()


def to_loopback(port: int) -> Resolver:
    async def lookup(host: str, _port: int) -> Sequence[Address]:
        return [(socket.AF_INET, ("127.0.0.1", port))]

    return Resolver(30.0, lookup=lookup)


async def test_verified_https_with_the_ca_file_and_keep_alive(ca: trustme.CA, ca_file: str) -> None:
    async with AioUpstream(hello, ssl_context=server_context(ca, "127.0.0.1")) as upstream:
        pool = UpstreamPool(
            upstream_config(upstream.target("https"), tls=UpstreamTLS(ca_file=ca_file))
        )
        for i in range(3):
            assert await fetch(pool, b"/%d" % i) == b"secure /%d" % i
        await pool.close()
    assert pool.connections_opened == 1


async def test_unknown_ca_is_refused_as_bad_gateway(ca: trustme.CA) -> None:
    async with AioUpstream(hello, ssl_context=server_context(ca, "127.0.0.1")) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target("https")))  # system store
        with pytest.raises(BadGateway):
            await fetch(pool)
        assert pool.open_connections == 0
        await pool.close()


async def test_verify_false_accepts_any_certificate(ca: trustme.CA) -> None:
    async with AioUpstream(hello, ssl_context=server_context(ca, "elsewhere.test")) as upstream:
        pool = UpstreamPool(
            upstream_config(upstream.target("https"), tls=UpstreamTLS(verify=False))
        )
        assert await fetch(pool) == b"secure /"
        await pool.close()


async def test_sni_and_certificate_name_are_the_target_host(ca: trustme.CA, ca_file: str) -> None:
    sni: list[str] = []
    context = server_context(ca, "upstream.test", seen_sni=sni)
    async with AioUpstream(hello, ssl_context=context) as upstream:
        pool = UpstreamPool(
            upstream_config(
                Target("https", "upstream.test", upstream.port), tls=UpstreamTLS(ca_file=ca_file)
            ),
            resolver=to_loopback(upstream.port),
        )
        assert await fetch(pool) == b"secure /"
        await pool.close()
    assert sni == ["upstream.test"]


async def test_certificate_for_another_name_is_bad_gateway(ca: trustme.CA, ca_file: str) -> None:
    async with AioUpstream(hello, ssl_context=server_context(ca, "other.test")) as upstream:
        pool = UpstreamPool(
            upstream_config(
                Target("https", "upstream.test", upstream.port), tls=UpstreamTLS(ca_file=ca_file)
            ),
            resolver=to_loopback(upstream.port),
        )
        with pytest.raises(BadGateway):
            await fetch(pool)
        await pool.close()


async def test_tls_handshake_not_done_within_the_connect_timeout_is_gateway_timeout() -> None:
    async def silent(conn: RawConnection) -> None:
        await conn.wait_eof()  # accepts TCP, never answers the ClientHello

    async with RawUpstream(silent) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target("https"), connect=0.1))
        with pytest.raises(GatewayTimeout):
            await fetch(pool)
        assert pool.open_connections == 0
        await pool.close()


async def test_close_delimited_body_over_tls_ends_at_close_notify(
    ca: trustme.CA, ca_file: str
) -> None:
    async def handler(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\n\r\nread until close")

    context = server_context(ca, "127.0.0.1")
    async with RawUpstream(handler, ssl_context=context) as upstream:
        pool = UpstreamPool(
            upstream_config(upstream.target("https"), tls=UpstreamTLS(ca_file=ca_file))
        )
        assert await fetch(pool) == b"read until close"
        await pool.close()


async def test_health_checks_reach_https_targets_verified(ca: trustme.CA, ca_file: str) -> None:
    async def health(request: web.BaseRequest) -> web.StreamResponse:
        checked.append((request.path, request.headers.get("Connection", "")))
        return web.Response(status=200 if request.path == "/healthz" else 404)

    checked: list[tuple[str, str]] = []
    async with AioUpstream(health, ssl_context=server_context(ca, "127.0.0.1")) as upstream:
        check = HealthCheckConfig(path="/healthz", interval=0.05, timeout=0.05)
        good = upstream_config(upstream.target("https"), tls=UpstreamTLS(ca_file=ca_file))
        pool = UpstreamPool(replace(good, health_check=check))
        # Without the CA the certificate cannot be verified: every check fails.
        unverified = UpstreamPool(replace(good, tls=UpstreamTLS(), health_check=check))
        pool.start()
        unverified.start()

        async def settled() -> bool:
            return not unverified.health.checked_healthy[0] and len(checked) >= 3

        await eventually(settled, "three checks, and the unverified target out", 5)
        await pool.close()
        await unverified.close()
    assert pool.health.checked_healthy == [True]
    assert unverified.health.checked_healthy == [False]
    assert checked[:3] == [("/healthz", "close")] * 3
